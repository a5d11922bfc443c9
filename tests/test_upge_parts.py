"""Denominators, stabilization masks, likelihood, aggregation and KL vs NumPy float64 references.

Values and gradients (wrt log π_θ) of every part, on inputs with right-padded masks, an all-masked row,
a length-1 row, ratios inside and outside the clip range, dual-clip and ±20-clamp tokens, and advantages
of both signs and zero.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hpt_jax import upge

LENGTHS = np.array([5, 3, 1, 0])
MASK = np.arange(5)[None, :] < LENGTHS[:, None]


def _ratio_case():
  """logp, old_logp, advantages [4, 5] with hand-placed ratios (see the comments)."""
  rng = np.random.default_rng(0)
  logp = np.log(rng.uniform(0.05, 0.95, (4, 5)))
  delta = np.array([
      [0.05, -0.1, 0.5, -0.5, 25.0],    # inside, inside, above 1+ε, below 1−ε, beyond +20 clamp
      [1.5, 1.5, -0.3, 0.0, 0.0],       # r ≈ 4.5 (dual clip for A < 0), r ≈ 0.74
      [-25.0, 0.0, 0.0, 0.0, 0.0],      # beyond −20 clamp, length-1 row
      [0.1, 0.1, 0.1, 0.1, 0.1],        # all-masked row
  ])
  adv = np.array([
      [1.0, -1.0, 1.0, -1.0, 1.0],
      [-1.0, 0.0, 2.0, 0.0, 0.0],       # dual-clip token, zero advantage, positive
      [-0.5, 0.0, 0.0, 0.0, 0.0],
      [1.0, 1.0, 1.0, 1.0, 1.0],
  ])
  return logp, logp - delta, adv


def _value_and_grad(fn, logp, seed=1):
  """Value of fn(logp) and the VJP with a random cotangent c: ∂Σ c·fn/∂logp."""
  c = np.random.default_rng(seed).normal(size=logp.shape)

  @jax.jit
  def value_and_vjp(lp, cot):
    value, vjp = jax.vjp(fn, lp)
    return value, vjp(cot)[0]

  value, grad = value_and_vjp(jnp.asarray(logp), jnp.asarray(c))
  return np.asarray(value), np.asarray(grad), c


def test_old_policy_ratio_clamps_at_20(x64):
  logp, old, _ = _ratio_case()
  value, grad, c = _value_and_grad(lambda lp: upge.old_policy_ratio(lp, jnp.asarray(old)), logp)
  delta = logp - old
  np.testing.assert_allclose(value, np.exp(np.clip(delta, -20, 20)), rtol=1e-12)
  np.testing.assert_allclose(grad, c * np.exp(delta) * (np.abs(delta) < 20), rtol=1e-12)
  unclamped = upge.old_policy_ratio(jnp.asarray(logp), jnp.asarray(old), clamp=None)
  np.testing.assert_allclose(unclamped, np.exp(delta), rtol=1e-12)


def test_on_policy_and_offline_weights(x64):
  logp, _, _ = _ratio_case()
  value, grad, c = _value_and_grad(upge.on_policy_ratio, logp)
  np.testing.assert_array_equal(value, np.ones_like(logp))
  np.testing.assert_allclose(grad, c, rtol=1e-12)  # ∇ log π
  value, grad, c = _value_and_grad(upge.offline_weight, logp)
  np.testing.assert_allclose(value, np.exp(logp), rtol=1e-12)
  np.testing.assert_allclose(grad, c * np.exp(logp), rtol=1e-12)  # ∇π = π ∇log π


def test_luffy_shaped_weight_values(x64):
  logp, _, _ = _ratio_case()
  value, grad, c = _value_and_grad(lambda lp: upge.luffy_shaped_weight(lp, gamma=0.3), logp)
  pi = np.exp(logp)
  np.testing.assert_allclose(value, pi / (pi + 0.3), rtol=1e-12)
  np.testing.assert_allclose(grad, c * 0.3 / (pi + 0.3) ** 2 * pi, rtol=1e-12)


def test_gspo_sequence_ratio(x64):
  logp, old, _ = _ratio_case()
  old = old.copy()
  old[0, 4] = logp[0, 4] - 0.2   # keep row 0 moderate
  old[2, 0] = logp[2, 0] - 30.0  # row 2: mean log-ratio 30 > cap 10: value e^10, no gradient
  value, grad, c = _value_and_grad(
      lambda lp: upge.gspo_sequence_ratio(lp, jnp.asarray(old), jnp.asarray(MASK)), logp)
  m = MASK.astype(float)
  seq = (m * (logp - old)).sum(-1) / np.maximum(m.sum(-1), 1)
  capped = seq > 10
  expected = np.exp(np.minimum(seq, 10))[:, None] * np.ones((1, 5))
  np.testing.assert_allclose(value, expected, rtol=1e-12)
  np.testing.assert_allclose(grad, c * expected * ~capped[:, None], rtol=1e-12)
  assert value[3, 0] == 1.0  # all-masked row: s = 1


def np_ppo(r_unclamped, adv, eps_low, eps_high, dual):
  delta = np.log(r_unclamped)
  r = np.exp(np.clip(delta, -20, 20))
  l1 = -adv * r
  l2 = -adv * np.clip(r, 1 - eps_low, 1 + eps_high)
  lc = np.maximum(l1, l2)
  loss = np.where(adv < 0, np.minimum(lc, -adv * dual), lc) if dual else lc
  dual_clipped = (adv < 0) & (lc > -adv * dual) if dual else np.zeros_like(adv, bool)
  clipped = l2 > l1
  stable = ~clipped & ~dual_clipped & (np.abs(delta) < 20)
  return loss, -adv * r * stable, clipped, dual_clipped


@pytest.mark.parametrize("dual", [None, 3.0])
def test_ppo_clip(dual, x64):
  logp, old, adv = _ratio_case()

  def fn(lp):
    return upge.ppo_clip(upge.old_policy_ratio(lp, jnp.asarray(old)), jnp.asarray(adv),
                         epsilon_low=0.2, epsilon_high=0.28, dual_clip=dual)

  value, grad, c = _value_and_grad(lambda lp: fn(lp)[0], logp)
  indicators = jax.jit(lambda lp: fn(lp)[1])(jnp.asarray(logp))
  ref_loss, ref_dldl, clipped, dual_clipped = np_ppo(np.exp(logp - old), adv, 0.2, 0.28, dual)
  np.testing.assert_allclose(value, ref_loss, rtol=1e-12)
  np.testing.assert_allclose(grad, c * ref_dldl, rtol=1e-12, atol=1e-300)
  np.testing.assert_array_equal(indicators["clipped"], clipped)
  assert clipped.any() and (~clipped).any()
  if dual:
    np.testing.assert_array_equal(indicators["dual_clipped"], dual_clipped)
    assert dual_clipped[1, 0]


def test_no_clip(x64):
  logp, old, adv = _ratio_case()
  value, grad, c = _value_and_grad(
      lambda lp: upge.no_clip(upge.old_policy_ratio(lp, jnp.asarray(old), clamp=None), jnp.asarray(adv))[0],
      logp)
  r = np.exp(logp - old)
  np.testing.assert_allclose(value, -adv * r, rtol=1e-12)
  np.testing.assert_allclose(grad, -c * adv * r, rtol=1e-12)


def test_cispo(x64):
  logp, old, adv = _ratio_case()
  value, grad, c = _value_and_grad(
      lambda lp: upge.cispo(upge.old_policy_ratio(lp, jnp.asarray(old)), lp, jnp.asarray(adv),
                            epsilon_low=0.2, epsilon_high=0.28)[0], logp)
  w = np.clip(np.exp(np.clip(logp - old, -20, 20)), 0.8, 1.28)
  np.testing.assert_allclose(value, -w * adv * logp, rtol=1e-12)
  np.testing.assert_allclose(grad, -c * w * adv, rtol=1e-12)


def test_likelihood(x64):
  logp, _, _ = _ratio_case()
  logp = logp.copy()
  logp[3, 2] = np.nan  # padding garbage must not leak
  np.testing.assert_allclose(upge.token_log_likelihood(jnp.asarray(logp), jnp.asarray(MASK)),
                             np.where(MASK, logp, 0.0), rtol=1e-12)
  np.testing.assert_allclose(upge.sequence_log_likelihood(jnp.asarray(logp), jnp.asarray(MASK)),
                             np.where(MASK, logp, 0.0).sum(-1), rtol=1e-12)
  np.testing.assert_array_equal(upge.token_nll(jnp.asarray(logp[:3])), -logp[:3])


def np_aggregate(loss, m, mode, width):
  m = m.astype(float)
  nonempty = (m.sum(-1) > 0).sum()
  sums = (loss * m).sum(-1)
  return {
      "token-mean": (loss * m).sum() / m.sum(),
      "token-sum": (loss * m).sum(),
      "seq-mean-token-sum": sums.sum() / nonempty,
      "seq-mean-token-mean": (sums / (m.sum(-1) + 1e-8)).sum() / nonempty,
      "seq-mean-token-sum-norm": sums.sum() / nonempty / width,
      "official-token-sum-over-T": sums.sum() / width,
  }[mode]


@pytest.mark.parametrize("mode", list(upge.Aggregation), ids=lambda m: m.value)
def test_aggregation_and_micro_batches(mode, x64):
  rng = np.random.default_rng(2)
  lengths = np.array([7, 3, 1, 0, 7, 5, 2, 6])
  mask = np.arange(7)[None, :] < lengths[:, None]
  loss = rng.normal(size=(8, 7))
  full = upge.aggregate(jnp.asarray(loss), jnp.asarray(mask), mode=mode.value, width=9)
  np.testing.assert_allclose(upge.finalize(full), np_aggregate(loss, mask, mode.value, 9), rtol=1e-13)
  # Gradient of the finalized value wrt the per-token loss: mask / normaliser.
  grad = jax.grad(lambda l: upge.finalize(upge.aggregate(l, jnp.asarray(mask), mode=mode, width=9)))(
      jnp.asarray(loss))
  eps_grad = jax.grad(lambda l: np_aggregate_jax(l, mask, mode.value, 9))(jnp.asarray(loss))
  np.testing.assert_allclose(grad, eps_grad, rtol=1e-13)
  acc = None
  for k in range(4):
    part = upge.aggregate(jnp.asarray(loss[2 * k:2 * k + 2]), jnp.asarray(mask[2 * k:2 * k + 2]), mode=mode,
                          width=9)
    acc = {"t": part} if acc is None else upge.add_terms(acc, {"t": part})
  np.testing.assert_allclose(upge.total_loss(acc), upge.finalize(full), rtol=1e-12, atol=0)


def np_aggregate_jax(loss, m, mode, width):
  """The NumPy formula above, traced with jnp so its gradient serves as the reference."""
  m = jnp.asarray(m, float)
  nonempty = (np.asarray(m).sum(-1) > 0).sum()
  sums = (loss * m).sum(-1)
  return {
      "token-mean": lambda: (loss * m).sum() / m.sum(),
      "token-sum": lambda: (loss * m).sum(),
      "seq-mean-token-sum": lambda: sums.sum() / nonempty,
      "seq-mean-token-mean": lambda: (sums / (m.sum(-1) + 1e-8)).sum() / nonempty,
      "seq-mean-token-sum-norm": lambda: sums.sum() / nonempty / width,
      "official-token-sum-over-T": lambda: sums.sum() / width,
  }[mode]()


def test_empty_aggregation_is_zero_not_nan():
  for mode in upge.Aggregation:
    term = upge.aggregate(jnp.full((2, 3), jnp.inf), jnp.zeros((2, 3), bool), mode=mode)
    assert upge.finalize(term) == 0.0
  assert upge.masked_mean(jnp.ones(3), jnp.zeros(3, bool)) == 0.0


def test_aggregation_errors():
  with pytest.raises(ValueError, match=r"aggregation: unknown mode 'mean'; known: token-mean"):
    upge.aggregate(jnp.zeros((2, 3)), jnp.ones((2, 3)), mode="mean")
  with pytest.raises(ValueError, match=r"mask: expected shape \(2, 3\)"):
    upge.aggregate(jnp.zeros((2, 3)), jnp.ones((3, 2)), mode="token-mean")
  with pytest.raises(ValueError, match=r"loss: expected rank 2"):
    upge.aggregate(jnp.zeros(3), jnp.ones(3), mode="token-mean")
  with pytest.raises(ValueError, match=r"mask: must be boolean or in \{0, 1\}; found -1"):
    upge.aggregate(jnp.zeros((2, 3)), -jnp.ones((2, 3), jnp.int32), mode="token-mean")
  with pytest.raises(ValueError, match=r"terms: keys differ"):
    upge.add_terms({"a": upge.LossTerm(1.0, 1.0)}, {"b": upge.LossTerm(1.0, 1.0)})


@pytest.mark.parametrize("kind", ["k1", "abs", "mse", "low_var_kl"])
def test_kl_penalties(kind, x64):
  rng = np.random.default_rng(4)
  logp = np.log(rng.uniform(0.05, 0.95, (2, 4)))
  ref = logp + np.array([[0.3, -0.2, 25.0, -3.0], [0.4, 1.0, -25.0, 2.5]])  # incl. clamp regions; no d = 0 (|d| kink)
  value, grad, c = _value_and_grad(lambda lp: upge.kl_penalty(lp, jnp.asarray(ref), kind=kind), logp)
  d = logp - ref
  x = np.clip(-d, -20, 20)
  k3 = np.exp(x) - x - 1
  expected, dvalue = {
      "k1": (d, np.ones_like(d)),
      "abs": (np.abs(d), np.sign(d)),
      "mse": (0.5 * d * d, d),
      "low_var_kl": (np.clip(k3, -10, 10), (1 - np.exp(x)) * (np.abs(d) < 20) * (np.abs(k3) < 10)),
  }[kind]
  np.testing.assert_allclose(value, expected, rtol=1e-12)
  np.testing.assert_allclose(grad, c * dvalue, rtol=1e-12)
  st_value, st_grad, c = _value_and_grad(
      lambda lp: upge.kl_penalty(lp, jnp.asarray(ref), kind=kind, straight_through=True), logp)
  np.testing.assert_allclose(st_value, expected, rtol=1e-12)
  np.testing.assert_allclose(st_grad, c * d, rtol=1e-12)  # gradient of k2


def test_kl_unknown_kind():
  with pytest.raises(ValueError, match=r"kind: unknown KL penalty 'k4'; known: k1, abs, k2, k3"):
    upge.kl_penalty(jnp.zeros((1, 2)), jnp.zeros((1, 2)), kind="k4")
