"""Reference-policy denominators 1/π_ref (UPGE part 2) as per-token importance weights w.

Each function returns a weight `w [B, T]` whose *value* is π_θ/π_ref (the factor the loss multiplies
by Â) and whose *gradient* is (1/π_ref)·∇π_θ, so that ∇(Â·w) is the UPGE estimator term:

| reference π_ref                  | function                 | value            | gradient             |
|----------------------------------|--------------------------|------------------|----------------------|
| π_θ (on-policy, SFT, REINFORCE)  | `on_policy_ratio`        | 1                | ∇log π_θ             |
| π_θold (PPO, GRPO, ...)          | `old_policy_ratio`       | e^{clamp(Δ,±c)}  | r·∇log π_θ inside ±c |
| 1 (offline RL: SRFT/LUFFY off)   | `offline_weight`         | π_θ              | ∇π_θ                 |
| π_θ·(π_old(τ)/π_θ(τ))^{1/|τ|}    | `gspo_sequence_ratio`    | s_i (seq. geo.)  | s_i·∇log π_θ         |
| 1 with LUFFY shaping f(π)=π/(π+γ)| `luffy_shaped_weight`    | π/(π+γ)          | γ/(π+γ)²·∇π_θ        |

Δ = log π_θ − log π_θold. All inputs are `[B, T]` float log-probs; `old_logp` is treated as constant.
"""

import jax
import jax.numpy as jnp

from hpt_jax.typing import Array
from hpt_jax.upge import checks

# verl clamps the log-ratio before exp so one stale token cannot overflow the loss.
DEFAULT_LOG_RATIO_CLAMP = 20.0
# verl `gspo` caps the sequence log-ratio at 10.
GSPO_MAX_LOG_RATIO = 10.0


def _check_logp(logp: Array, name: str = "logp") -> None:
  checks.check_rank(logp, rank=2, name=name)
  checks.check_floating(logp, name=name)


def on_policy_ratio(logp: Array) -> Array:
  """exp(ℓ − sg(ℓ)): value 1, gradient ∇log π_θ (π_ref = π_θ). Returns [B, T]."""
  _check_logp(logp)
  return jnp.exp(logp - jax.lax.stop_gradient(logp))


def log_ratio(logp: Array, old_logp: Array, *, clamp: float | None = DEFAULT_LOG_RATIO_CLAMP) -> Array:
  """Δ = ℓ − sg(ℓ_old), optionally clamped to [−clamp, clamp] (no gradient outside). Returns [B, T]."""
  _check_logp(logp)
  checks.check_shape(old_logp, shape=logp.shape, name="old_logp")
  delta = logp - jax.lax.stop_gradient(old_logp)
  return delta if clamp is None else jnp.clip(delta, -clamp, clamp)


def old_policy_ratio(logp: Array, old_logp: Array, *, clamp: float | None = DEFAULT_LOG_RATIO_CLAMP) -> Array:
  """r = exp(clamp(ℓ − ℓ_old, ±clamp)) (π_ref = π_θold); `clamp=None` is the official HPT/LUFFY r.

  Returns:
    [B, T]; gradient r·∇ℓ where |Δ| < clamp, 0 beyond it.
  """
  return jnp.exp(log_ratio(logp, old_logp, clamp=clamp))


def offline_weight(logp: Array) -> Array:
  """π_θ = exp(ℓ) (π_ref ≡ 1, offline RL / rejection sampling). Returns [B, T]."""
  _check_logp(logp)
  return jnp.exp(logp)


def gspo_sequence_ratio(logp: Array, old_logp: Array, response_mask: Array, *,
                        max_log_ratio: float = GSPO_MAX_LOG_RATIO) -> Array:
  """GSPO's sequence geometric-mean ratio, broadcast to tokens with a per-token gradient (verl `gspo`).

  log s_it = min(ℓ_it − sg(ℓ_it) + sg(Σ_t m Δ / max(|y_i|, 1)), max_log_ratio); no ±20 clamp.

  Args:
    logp, old_logp: [B, T]; response_mask: [B, T].

  Returns:
    [B, T] weight: value s_i on every token of row i, gradient s_i·∇ℓ_it.
  """
  _check_logp(logp)
  checks.check_shape(old_logp, shape=logp.shape, name="old_logp")
  mask = checks.as_mask(response_mask, shape=logp.shape, name="response_mask")
  delta = jnp.where(mask, logp - old_logp, 0.0)
  lengths = jnp.maximum(mask.sum(-1), 1).astype(logp.dtype)
  seq_log_ratio = jax.lax.stop_gradient(delta.sum(-1) / lengths)  # [B]
  log_s = logp - jax.lax.stop_gradient(logp) + seq_log_ratio[:, None]
  return jnp.exp(jnp.minimum(log_s, max_log_ratio))


def luffy_shaped_weight(logp: Array, *, gamma: float) -> Array:
  """LUFFY policy shaping f(π) = π/(π + γ) with π = exp(ℓ) not detached (`p_div_p_γ`).

  Returns:
    [B, T]; gradient γ/(π+γ)²·∇π = γ/(π+γ)²·π·∇log π.
  """
  _check_logp(logp)
  if gamma <= 0:
    raise ValueError(f"gamma: must be > 0, got {gamma}")
  prob = jnp.exp(logp)
  return prob / (prob + gamma)
