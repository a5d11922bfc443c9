"""Stabilization masks 1_stable (UPGE part 1) as per-token surrogate losses.

Each function turns an importance weight `w [B, T]` (from `denominators`) and advantages `A [B, T]`
into the per-token loss whose gradient is 1_stable·Â·∇w, and reports boolean clip indicators `[B, T]`
(turn them into fractions with `aggregation.masked_mean`). The losses are unreduced and unmasked.

| mask                       | function   | per-token loss                        | 1_stable = 0 where          |
|----------------------------|------------|---------------------------------------|-----------------------------|
| none (SFT, REINFORCE, off) | `no_clip`  | −A·w                                  | never                       |
| PPO clip, clip-higher      | `ppo_clip` | max(−A r, −A clip(r, 1−ε_l, 1+ε_h))   | A>0, r>1+ε_h; A<0, r<1−ε_l  |
|  + dual clip c             |            | A<0: min(·, −A c)                     | A<0, r>c                    |
| GSPO sequence clip         | `ppo_clip` | same, on the GSPO sequence ratio      | per sequence                |
| CISPO                      | `cispo`    | −sg(clip(r, 1−ε_l, 1+ε_h))·A·ℓ        | never; weight clip(r)/r     |

Clipping uses `jnp.clip`, whose gradient is 0 strictly outside the range (torch `clamp` agrees there;
the two differ only exactly on a boundary, ESTIMATORS.md §6).
"""

import jax
import jax.numpy as jnp

from hpt_jax.typing import Array
from hpt_jax.upge import checks


def _check(ratio: Array, advantages: Array) -> None:
  checks.check_rank(ratio, rank=2, name="ratio")
  checks.check_shape(advantages, shape=ratio.shape, name="advantages")


def no_clip(ratio: Array, advantages: Array) -> tuple[Array, dict[str, Array]]:
  """−A·w: no stabilization (official HPT/LUFFY `loss_remove_clip=True`, SFT, REINFORCE).

  Returns:
    (loss [B, T], {}).
  """
  _check(ratio, advantages)
  return -advantages * ratio, {}


def ppo_clip(ratio: Array, advantages: Array, *, epsilon_low: float, epsilon_high: float,
             dual_clip: float | None = None) -> tuple[Array, dict[str, Array]]:
  """PPO clipped surrogate with asymmetric range and optional dual clip (verl `vanilla`).

  L1 = −A r, L2 = −A clip(r, 1−ε_low, 1+ε_high), L = max(L1, L2); with dual clip c > 1,
  L = min(L, −A c) where A < 0 (A = 0 takes the plain branch, as torch.where(A < 0) does).

  Args:
    ratio: [B, T] r (token ratio or GSPO's sequence ratio).
    advantages: [B, T].
    epsilon_low, epsilon_high: clip range [1 − ε_low, 1 + ε_high].
    dual_clip: c, or None for no dual clip.

  Returns:
    (loss [B, T], {"clipped": L2 > L1, "dual_clipped": A<0 and L > −A c}) indicators [B, T] bool.
  """
  _check(ratio, advantages)
  if epsilon_low < 0 or epsilon_high < 0:
    raise ValueError(f"epsilon_low/epsilon_high: must be >= 0, got {epsilon_low}, {epsilon_high}")
  if dual_clip is not None and dual_clip <= 1.0:
    raise ValueError(f"dual_clip: must be > 1, got {dual_clip}")
  unclipped = -advantages * ratio
  clipped = -advantages * jnp.clip(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)
  loss = jnp.maximum(unclipped, clipped)
  indicators = {"clipped": clipped > unclipped}
  if dual_clip is not None:
    bound = -advantages * dual_clip
    negative = advantages < 0
    indicators["dual_clipped"] = negative & (loss > bound)
    loss = jnp.where(negative, jnp.minimum(loss, bound), loss)
  return loss, indicators


def cispo(ratio: Array, logp: Array, advantages: Array, *, epsilon_low: float,
          epsilon_high: float) -> tuple[Array, dict[str, Array]]:
  """CISPO: −sg(clip(r, 1−ε_low, 1+ε_high))·A·ℓ (verl `cispo`); the clipped IS weight has no gradient.

  Args:
    ratio: [B, T] r (value only is used); logp: [B, T] ℓ with gradient; advantages: [B, T].

  Returns:
    (loss [B, T], {"clipped": r outside [1−ε_low, 1+ε_high]}).
  """
  _check(ratio, advantages)
  checks.check_shape(logp, shape=ratio.shape, name="logp")
  low, high = 1.0 - epsilon_low, 1.0 + epsilon_high
  weight = jax.lax.stop_gradient(jnp.clip(ratio, low, high))
  return -weight * advantages * logp, {"clipped": (ratio < low) | (ratio > high)}
