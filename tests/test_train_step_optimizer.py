"""Optimizer: clip + AdamW against a NumPy transcription of torch's AdamW; skipped updates."""

import numpy as np
import optax
import pytest

import jax
import jax.numpy as jnp

from hpt_jax.training import optimizer as optim_lib


def _torch_adamw_reference(params, grads_seq, *, lr, wd, b1, b2, eps, clip, skip_above):
  """torch: clip_grad_norm_(clip) (skip if the norm is non-finite or > skip_above), then AdamW:
  p ← p·(1 − lr·wd); m, v moments; p ← p − lr·m̂/(√v̂ + eps). Skipped steps change nothing."""
  p = {k: v.astype(np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v2 = {k: np.zeros_like(v) for k, v in p.items()}
  t = 0
  skipped = 0
  for grads in grads_seq:
    norm = np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads.values()))
    if not np.isfinite(norm) or norm > skip_above:
      skipped += 1
      continue
    scale = min(1.0, clip / (norm + 1e-6))
    t += 1
    for k in p:
      g = grads[k].astype(np.float64) * scale
      p[k] = p[k] * (1 - lr * wd)
      m[k] = b1 * m[k] + (1 - b1) * g
      v2[k] = b2 * v2[k] + (1 - b2) * g * g
      m_hat = m[k] / (1 - b1 ** t)
      v_hat = v2[k] / (1 - b2 ** t)
      p[k] = p[k] - lr * m_hat / (np.sqrt(v_hat) + eps)
  return p, skipped


def test_clip_adamw_matches_torch_formula_and_skips_bad_steps():
  rng = np.random.default_rng(0)
  params = {"a": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=(5,)).astype(np.float32)}
  small = {k: 0.1 * rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}  # norm < 1
  big = {k: 3.0 * rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}  # clipped, < 80
  huge = {k: 100.0 * np.ones(v.shape, np.float32) for k, v in params.items()}  # > 80: skipped
  nan = {k: np.where(np.arange(v.size).reshape(v.shape) == 1, np.nan, 0.1).astype(np.float32)
         for k, v in params.items()}  # non-finite: skipped
  seq = [small, big, huge, nan, small]
  cfg = optim_lib.OptimConfig(learning_rate=1e-2, weight_decay=0.01, skip_above_norm=80.0)
  opt = optim_lib.make_optimizer(cfg)

  @jax.jit
  def update(p, s, g):
    u, s = opt.update(g, s, p)
    return optim_lib.apply_updates_unless_skipped(p, u, s), s

  p = jax.tree.map(jnp.asarray, params)
  state = opt.init(p)
  for i, g in enumerate(seq):
    p_before, s_before = jax.device_get((p, state))
    p, state = update(p, state, jax.tree.map(jnp.asarray, g))
    if i in (2, 3):
      assert bool(state.last_skipped)
      for x, y in zip(jax.tree.leaves((p, state.inner)), jax.tree.leaves((p_before, s_before.inner))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    else:
      assert not bool(state.last_skipped)
  ref, ref_skipped = _torch_adamw_reference(params, seq, lr=1e-2, wd=0.01, b1=0.9, b2=0.999, eps=1e-8,
                                            clip=1.0, skip_above=80.0)
  assert int(state.num_skipped) == ref_skipped == 2
  for k in params:
    np.testing.assert_allclose(np.asarray(p[k]), ref[k], rtol=1e-5, atol=1e-6)
  # The norm is reported before clipping.
  np.testing.assert_allclose(float(state.last_grad_norm), float(optax.global_norm(small)), rtol=1e-6)


def test_no_threshold_skips_only_non_finite_and_schedules_validate():
  opt = optim_lib.make_optimizer(optim_lib.OptimConfig(skip_above_norm=None))
  p = {"w": jnp.ones((2,))}
  s = opt.init(p)
  _, s = opt.update({"w": jnp.full((2,), 1e6)}, s, p)
  assert not bool(s.last_skipped)
  _, s = opt.update({"w": jnp.array([jnp.inf, 0.0])}, s, p)
  assert bool(s.last_skipped) and int(s.num_skipped) == 1
  sched = optim_lib.learning_rate_schedule(optim_lib.OptimConfig(
      learning_rate=1.0, schedule=optim_lib.Schedule.WARMUP_COSINE, warmup_steps=10, total_steps=110))
  np.testing.assert_allclose([float(sched(0)), float(sched(10)), float(sched(60)), float(sched(110))],
                             [0.0, 1.0, 0.5, 0.0], atol=1e-6)
  with pytest.raises(ValueError, match="total_steps"):
    optim_lib.OptimConfig(schedule=optim_lib.Schedule.WARMUP_COSINE, warmup_steps=5, total_steps=5)
  with pytest.raises(ValueError, match="skip_above_norm"):
    optim_lib.OptimConfig(skip_above_norm=0.0)


def _warmup_cosine(t, *, lr, warmup, total, final):
  """Linear 0 → lr over `warmup`, then cosine from lr to final·lr at `total` (held after)."""
  if t < warmup:
    return lr * t / warmup
  frac = min(t - warmup, total - warmup) / (total - warmup)
  return final * lr + (lr - final * lr) * 0.5 * (1 + np.cos(np.pi * frac))


@pytest.mark.parametrize("start", [0, 30])
def test_token_clock_schedule_reads_tokens_before_each_update(start):
  # Constant gradients: Adam's bias-corrected direction is g/(|g| + eps) at every update, so each
  # update is −lr(t)·that, t = start + the tokens of the updates applied before it.
  cfg = optim_lib.OptimConfig(learning_rate=2.0, weight_decay=0.0, clip_norm=None, skip_above_norm=None,
                              schedule=optim_lib.Schedule.WARMUP_COSINE, warmup_steps=20, total_steps=100,
                              final_lr_ratio=0.1, schedule_unit=optim_lib.ScheduleUnit.TOKENS,
                              schedule_start=start)
  opt = optim_lib.make_optimizer(cfg)
  g = {"w": jnp.asarray([0.5, -2.0])}
  direction = np.asarray([0.5, -2.0]) / (np.abs([0.5, -2.0]) + 1e-8)
  update = jax.jit(lambda s, n: opt.update(g, s, g, num_tokens=n))
  s = opt.init(g)
  t = start
  for n in (7, 13, 1, 40, 55, 3):
    u, s = update(s, jnp.int32(n))
    expected = -_warmup_cosine(t, lr=2.0, warmup=20, total=100, final=0.1) * direction
    np.testing.assert_allclose(np.asarray(u["w"]), expected, rtol=5e-5, atol=1e-7)  # float32 cos
    t += n
  # A skipped (non-finite) update moves the clock no more than optax's count.
  clock = float(s.inner[-1].tokens)
  _, s = opt.update({"w": jnp.asarray([jnp.nan, 1.0])}, s, g, num_tokens=1000)
  assert bool(s.last_skipped) and float(s.inner[-1].tokens) == clock == t - start
  with pytest.raises(ValueError, match="num_tokens"):
    opt.update(g, s, g)
  with pytest.raises(ValueError, match="schedule_start"):
    optim_lib.OptimConfig(schedule_start=-1)
