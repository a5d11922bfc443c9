"""The optimizer: global-norm clip, AdamW, optional schedule, and update skipping on bad gradients.

The official recipe (verl 0.1 fork, `dp_actor` + `mix_fsdp_worker`): `clip_grad_norm_(1.0)`, skip the
step (zero the grads) when the pre-clip norm is non-finite or greater than `max_grad_norm` (80 in
the Qwen script; the LLaMA script sets none), then `torch.optim.AdamW(lr=5e-6, betas=(0.9, 0.999),
weight_decay=0.01)` with a constant LR. torch's decoupled decay p ← p − lr·wd·p followed by the
bias-corrected Adam step equals optax's `scale_by_adam → add_decayed_weights → scale(−lr)`.

Skipping here means the update is exactly zero AND the AdamW moments/count keep their old values
(a zero gradient fed through Adam would still decay the moments and move the params via momentum),
and `num_skipped` counts it.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from hpt_jax.typing import Array


class Schedule(enum.Enum):
  CONSTANT = enum.auto()
  WARMUP_CONSTANT = enum.auto()  # linear 0 → lr over warmup_steps, then constant
  WARMUP_COSINE = enum.auto()  # linear warmup, then cosine decay to final_lr_ratio·lr at total_steps


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimConfig:
  """AdamW with clipping and skipping; defaults are the paper's HPT (Qwen) recipe."""

  learning_rate: float = 5e-6
  weight_decay: float = 0.01
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  clip_norm: float | None = 1.0  # global-norm clip; None disables
  skip_above_norm: float | None = 80.0  # skip when the pre-clip norm exceeds this; None: only non-finite
  schedule: Schedule = Schedule.CONSTANT
  warmup_steps: int = 0
  total_steps: int = 0  # used by WARMUP_COSINE
  final_lr_ratio: float = 0.0

  def __post_init__(self):
    if self.learning_rate <= 0:
      raise ValueError(f"OptimConfig.learning_rate must be > 0, got {self.learning_rate}")
    if self.clip_norm is not None and self.clip_norm <= 0:
      raise ValueError(f"OptimConfig.clip_norm must be > 0 or None, got {self.clip_norm}")
    if self.skip_above_norm is not None and self.skip_above_norm <= 0:
      raise ValueError(f"OptimConfig.skip_above_norm must be > 0 or None, got {self.skip_above_norm}")
    if self.schedule is Schedule.WARMUP_COSINE and self.total_steps <= self.warmup_steps:
      raise ValueError(f"OptimConfig.total_steps ({self.total_steps}) must exceed warmup_steps "
                       f"({self.warmup_steps}) for WARMUP_COSINE")
    if self.schedule is not Schedule.CONSTANT and self.warmup_steps < 0:
      raise ValueError(f"OptimConfig.warmup_steps must be >= 0, got {self.warmup_steps}")


def learning_rate_schedule(config: OptimConfig) -> optax.Schedule:
  lr = config.learning_rate
  match config.schedule:
    case Schedule.CONSTANT:
      return optax.constant_schedule(lr)
    case Schedule.WARMUP_CONSTANT:
      return optax.join_schedules(
          [optax.linear_schedule(0.0, lr, max(config.warmup_steps, 1)), optax.constant_schedule(lr)],
          [config.warmup_steps])
    case Schedule.WARMUP_COSINE:
      return optax.warmup_cosine_decay_schedule(
          init_value=0.0, peak_value=lr, warmup_steps=config.warmup_steps,
          decay_steps=config.total_steps, end_value=lr * config.final_lr_ratio)
  raise ValueError(f"OptimConfig.schedule: unknown {config.schedule}")


class SkipState(NamedTuple):
  inner: optax.OptState  # the wrapped chain's state, frozen on skipped steps
  num_skipped: Array  # int32 [], skipped updates so far
  last_grad_norm: Array  # float32 [], pre-clip global norm of the last gradient
  last_skipped: Array  # bool [], whether the last update was skipped


def skip_bad_updates(inner: optax.GradientTransformation, *,
                     max_norm: float | None) -> optax.GradientTransformationExtraArgs:
  """Wraps `inner` so that updates with a non-finite (or > max_norm) global gradient norm are skipped.

  On a skipped step the returned updates are zeros and `inner`'s state is the old one.
  """

  def init(params):
    return SkipState(inner=inner.init(params), num_skipped=jnp.zeros((), jnp.int32),
                     last_grad_norm=jnp.zeros((), jnp.float32), last_skipped=jnp.zeros((), bool))

  def update(grads, state, params=None, **extra):
    del extra
    norm = optax.global_norm(grads)
    ok = jnp.isfinite(norm)
    if max_norm is not None:
      ok &= norm <= max_norm
    updates, new_inner = inner.update(grads, state.inner, params)
    # where (not multiply): a NaN update times 0 is still NaN.
    updates = jax.tree.map(lambda u: jnp.where(ok, u, jnp.zeros_like(u)), updates)
    new_inner = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_inner, state.inner)
    return updates, SkipState(inner=new_inner, num_skipped=state.num_skipped + (~ok).astype(jnp.int32),
                              last_grad_norm=norm.astype(jnp.float32), last_skipped=~ok)

  return optax.GradientTransformationExtraArgs(init, update)


def make_optimizer(config: OptimConfig) -> optax.GradientTransformationExtraArgs:
  """clip_by_global_norm → AdamW (decoupled weight decay) → −lr·schedule, wrapped in the skip."""
  parts = []
  if config.clip_norm is not None:
    parts.append(optax.clip_by_global_norm(config.clip_norm))
  parts += [
      optax.scale_by_adam(b1=config.b1, b2=config.b2, eps=config.eps),
      optax.add_decayed_weights(config.weight_decay),
      optax.scale_by_learning_rate(learning_rate_schedule(config)),
  ]
  return skip_bad_updates(optax.chain(*parts), max_norm=config.skip_above_norm)


def apply_updates_unless_skipped(params, updates, opt_state: SkipState):
  """params + updates, but bit-identical params when the update was skipped (−0.0 + 0.0 = +0.0)."""
  new = optax.apply_updates(params, updates)
  return jax.tree.map(lambda n, o: jnp.where(opt_state.last_skipped, o, n), new, params)
