"""Advantage estimators against NumPy float64 references written from ESTIMATORS.md §1.4."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hpt_jax import upge

def np_grpo(s, ids, *, norm, eps=1e-6):
  out = np.zeros_like(s)
  for g in np.unique(ids):
    idx = ids == g
    x = s[idx]
    if idx.sum() == 1:
      # verl: μ = 0, σ = 1 as float32 tensors, so the divisor is float32(1 + 1e-6).
      out[idx] = x / float(np.float32(1.0) + np.float32(eps)) if norm else x
    else:
      out[idx] = (x - x.mean()) / (x.std(ddof=1) + eps) if norm else x - x.mean()
  return out


def np_rloo(s, ids):
  out = s.copy()
  for g in np.unique(ids):
    idx = np.flatnonzero(ids == g)
    if len(idx) > 1:
      for i in idx:
        out[i] = s[i] - np.mean([s[j] for j in idx if j != i])
  return out


def np_masked_whiten(v, m):
  n = m.sum()
  mean = (v * m).sum() / (n + 1e-8)
  var = (((v - mean) ** 2) * m).sum() / (n + 1e-8) * n / (n - 1)
  return (v - mean) / np.sqrt(var + 1e-8)


def np_gae(r, v, m, gamma, lam):
  b, t = r.shape
  next_v = np.zeros(b)
  last = np.zeros(b)
  adv = np.zeros((b, t))
  for k in reversed(range(t)):
    delta = r[:, k] + gamma * next_v - v[:, k]
    g = delta + gamma * lam * last
    next_v = v[:, k] * m[:, k] + (1 - m[:, k]) * next_v
    last = g * m[:, k] + (1 - m[:, k]) * last
    adv[:, k] = last
  return np_masked_whiten(adv, m), adv + v


def _mask(lengths, t):
  return np.arange(t)[None, :] < np.asarray(lengths)[:, None]


IDS = np.array([1, 0, 2, 1, 2, 2, 1, 2, 2, 1, 2, 2, 2, 3, 3, 3])  # sizes 1 (id 0), 4, 8, 3 (constant)


def _case():
  rng = np.random.default_rng(0)
  s = rng.integers(0, 2, IDS.shape).astype(float) + 0.25 * rng.normal(size=IDS.shape)
  s[IDS == 3] = 0.5  # σ = 0 group: advantage 0, not NaN
  return s


@pytest.mark.parametrize("norm", [True, False], ids=["grpo", "dr_grpo"])
def test_grpo(norm, x64):
  s = _case()
  assert sorted(np.bincount(IDS)) == [1, 3, 4, 8]
  fn = jax.jit(functools.partial(upge.grpo_advantages, num_groups=5, normalize_by_std=norm))
  got = fn(jnp.asarray(s), jnp.asarray(IDS))
  np.testing.assert_allclose(got, np_grpo(s, IDS, norm=norm), rtol=1e-12, atol=1e-14)
  assert got[IDS == 3].tolist() == [0.0, 0.0, 0.0]


def test_grpo_singleton_uses_float32_one_plus_eps(x64):
  got = upge.grpo_advantages(jnp.asarray([2.0]), jnp.asarray([0]), num_groups=1)
  assert float(got[0]) == 2.0 / 1.0000009536743164


def test_union_group_includes_demo_rows(x64):
  s = np.array([1.0, 0.0, 0.0, 1.0, 1.0])  # last row is the demonstration of prompt 0
  ids = np.array([0, 0, 0, 0, 0])
  got = upge.union_group_advantages(jnp.asarray(s), jnp.asarray(ids), jnp.asarray([0, 0, 0, 0, 1]),
                                    num_groups=1)
  np.testing.assert_allclose(got, s - s.mean(), rtol=1e-12)


def test_rloo(x64):
  s = _case()
  got = jax.jit(functools.partial(upge.rloo_advantages, num_groups=5))(jnp.asarray(s), jnp.asarray(IDS))
  np.testing.assert_allclose(got, np_rloo(s, IDS), rtol=1e-12, atol=1e-14)
  assert got[IDS == 0][0] == s[IDS == 0][0]  # singleton keeps the raw score


def test_reinforce_and_sft(x64):
  s = jnp.asarray([1.0, 0.0, -0.5, 2.0])
  np.testing.assert_array_equal(upge.reinforce_advantages(s), s)
  np.testing.assert_array_equal(upge.reinforce_advantages(s, plus_minus_one=True), [1.0, -1.0, -1.0, 1.0])
  np.testing.assert_array_equal(upge.sft_advantages(3), [1.0, 1.0, 1.0])


def test_reinforce_pp_baseline(x64):
  s = _case()
  m = _mask(np.arange(len(s)) % 5, 4)  # includes all-masked rows
  got = jax.jit(functools.partial(upge.reinforce_pp_baseline_advantages, num_groups=5))(
      jnp.asarray(s), jnp.asarray(IDS), jnp.asarray(m))
  centred = s.copy()
  for g in np.unique(IDS):
    idx = IDS == g
    if idx.sum() > 1:
      centred[idx] = s[idx] - s[idx].mean()
  tiled = centred[:, None] * m
  np.testing.assert_allclose(got, np_masked_whiten(tiled, m) * m, rtol=1e-10, atol=1e-12)


def test_gae(x64):
  rng = np.random.default_rng(1)
  m = _mask([5, 3, 1, 0], 5).astype(float)
  r = rng.normal(size=(4, 5)) * m
  v = rng.normal(size=(4, 5))
  got_adv, got_ret = jax.jit(functools.partial(upge.gae_advantages, gamma=0.9, lambda_=0.8))(
      jnp.asarray(r), jnp.asarray(v), jnp.asarray(m))
  ref_adv, ref_ret = np_gae(r, v, m, 0.9, 0.8)
  np.testing.assert_allclose(got_ret, ref_ret, rtol=1e-12, atol=1e-14)
  np.testing.assert_allclose(got_adv, ref_adv, rtol=1e-10, atol=1e-12)


def test_vmap_equals_loop(x64):
  s = np.stack([_case(), _case()[::-1]])
  fn = jax.vmap(functools.partial(upge.grpo_advantages, num_groups=5), in_axes=(0, None))
  got = fn(jnp.asarray(s), jnp.asarray(IDS))
  for k in range(2):
    np.testing.assert_allclose(got[k], np_grpo(s[k], IDS, norm=True), rtol=1e-12, atol=1e-14)


def test_bad_inputs_name_the_argument():
  s = jnp.zeros(4)
  with pytest.raises(ValueError, match=r"group_ids: values must lie in \[0, num_groups=2\)"):
    upge.grpo_advantages(s, jnp.asarray([0, 1, 2, 0]), num_groups=2)
  with pytest.raises(ValueError, match=r"group_ids: expected an integer dtype"):
    upge.grpo_advantages(s, jnp.zeros(4), num_groups=2)
  with pytest.raises(ValueError, match=r"group_ids: expected shape \(4,\)"):
    upge.rloo_advantages(s, jnp.zeros(3, jnp.int32), num_groups=2)
  with pytest.raises(ValueError, match=r"scores: expected rank 1"):
    upge.grpo_advantages(jnp.zeros((4, 1)), jnp.zeros(4, jnp.int32), num_groups=1)
  with pytest.raises(ValueError, match=r"response_mask: must be boolean or in \{0, 1\}"):
    upge.gae_advantages(jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.full((2, 3), 2), gamma=1.0, lambda_=1.0)
