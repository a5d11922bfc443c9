"""The optimizer: global-norm clip, AdamW, optional schedule, and update skipping on bad gradients.

The official recipe (verl 0.1 fork, `dp_actor` + `mix_fsdp_worker`): `clip_grad_norm_(1.0)`, skip the
step (zero the grads) when the pre-clip norm is non-finite or greater than `max_grad_norm` (80 in
the Qwen script; the LLaMA script sets none), then `torch.optim.AdamW(lr=5e-6, betas=(0.9, 0.999),
weight_decay=0.01)` with a constant LR. torch's decoupled decay p ← p − lr·wd·p followed by the
bias-corrected Adam step equals optax's `scale_by_adam → add_decayed_weights → scale(−lr)`.

Skipping here means the update is exactly zero AND the AdamW moments/count keep their old values
(a zero gradient fed through Adam would still decay the moments and move the params via momentum),
and `num_skipped` counts it.

The lr schedule's clock is either the number of optimizer updates (optax's count) or the number of
training tokens (`ScheduleUnit.TOKENS`): then `warmup_steps` / `total_steps` / `schedule_start` are
token counts, the state carries the tokens of the updates applied so far, and the train step passes
each update's real (attended) token count as `optimizer.update(..., num_tokens=...)`. Runs whose steps
carry different numbers of tokens (HPT's demonstration rows replace n rollouts by 1) then see the same
lr as a function of how much they have trained on, and a run that stops at a token budget
(`TrainConfig.training_token_budget`) ends its schedule where the budget ends.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from hpt_jax.typing import Array


class ScheduleUnit(enum.Enum):
  """What the schedule's clock counts."""
  UPDATES = enum.auto()  # optimizer updates applied (optax's count)
  TOKENS = enum.auto()  # training tokens of the updates applied (`num_tokens` of each update)


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
  # The clock of warmup_steps / total_steps (updates, or training tokens).
  schedule_unit: ScheduleUnit = ScheduleUnit.UPDATES
  # Where the clock starts (in schedule_unit): a second run continuing a first one's schedule
  # (SFT→GRPO as two runs) starts at the first run's count.
  schedule_start: int = 0

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
    if self.schedule_start < 0:
      raise ValueError(f"OptimConfig.schedule_start must be >= 0, got {self.schedule_start}")


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
  inner = optax.with_extra_args_support(inner)  # forwards extra args (num_tokens); no-op if it takes them

  def init(params):
    return SkipState(inner=inner.init(params), num_skipped=jnp.zeros((), jnp.int32),
                     last_grad_norm=jnp.zeros((), jnp.float32), last_skipped=jnp.zeros((), bool))

  def update(grads, state, params=None, **extra):
    norm = optax.global_norm(grads)
    ok = jnp.isfinite(norm)
    if max_norm is not None:
      ok &= norm <= max_norm
    # extra (num_tokens) reaches a token-clock schedule; a skipped update leaves its clock too, as
    # it leaves optax's update count.
    updates, new_inner = inner.update(grads, state.inner, params, **extra)
    # where (not multiply): a NaN update times 0 is still NaN.
    updates = jax.tree.map(lambda u: jnp.where(ok, u, jnp.zeros_like(u)), updates)
    new_inner = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_inner, state.inner)
    return updates, SkipState(inner=new_inner, num_skipped=state.num_skipped + (~ok).astype(jnp.int32),
                              last_grad_norm=norm.astype(jnp.float32), last_skipped=~ok)

  return optax.GradientTransformationExtraArgs(init, update)


class TokenClockState(NamedTuple):
  tokens: Array  # float32 [], training tokens of the updates applied so far (from schedule_start)


def scale_by_token_schedule(schedule: optax.Schedule, *, start: int = 0
                            ) -> optax.GradientTransformationExtraArgs:
  """updates · −schedule(start + tokens so far); each update adds its `num_tokens` to the clock.

  The lr of an update is read before its own tokens are added (as optax's count is read before
  it is incremented). float32 clock: exact to 2^24 tokens, relative error < 1e-6 beyond (a schedule
  only needs the fraction of the way through).
  """

  def init(params):
    del params
    return TokenClockState(tokens=jnp.zeros((), jnp.float32))

  def update(updates, state, params=None, *, num_tokens=None, **extra):
    del params, extra
    if num_tokens is None:
      raise ValueError("optimizer.update: OptimConfig.schedule_unit=TOKENS needs num_tokens= (the update's "
                       "training tokens)")
    lr = schedule(jnp.float32(start) + state.tokens)
    updates = jax.tree.map(lambda u: (-lr * u).astype(u.dtype), updates)
    return updates, TokenClockState(tokens=state.tokens + jnp.asarray(num_tokens, jnp.float32))

  return optax.GradientTransformationExtraArgs(init, update)


def _scale_by_lr(config: OptimConfig) -> optax.GradientTransformation:
  schedule = learning_rate_schedule(config)
  match config.schedule_unit:
    case ScheduleUnit.TOKENS:
      return scale_by_token_schedule(schedule, start=config.schedule_start)
    case ScheduleUnit.UPDATES:
      start = config.schedule_start
      return optax.scale_by_learning_rate(schedule if start == 0 else (lambda count: schedule(count + start)))
  raise ValueError(f"OptimConfig.schedule_unit: unknown {config.schedule_unit}")


def make_optimizer(config: OptimConfig) -> optax.GradientTransformationExtraArgs:
  """clip_by_global_norm → AdamW (decoupled weight decay) → −lr·schedule, wrapped in the skip.

  `update(grads, state, params, num_tokens=...)`: `num_tokens` (the update's training tokens) drives
  a `ScheduleUnit.TOKENS` schedule and is ignored otherwise.
  """
  parts = []
  if config.clip_norm is not None:
    parts.append(optax.clip_by_global_norm(config.clip_norm))
  parts += [
      optax.scale_by_adam(b1=config.b1, b2=config.b2, eps=config.eps),
      optax.add_decayed_weights(config.weight_decay),
      _scale_by_lr(config),
  ]
  return skip_bad_updates(optax.chain(*parts), max_norm=config.skip_above_norm)


def apply_updates_unless_skipped(params, updates, opt_state: SkipState):
  """params + updates, but bit-identical params when the update was skipped (−0.0 + 0.0 = +0.0)."""
  new = optax.apply_updates(params, updates)
  return jax.tree.map(lambda n, o: jnp.where(opt_state.last_skipped, o, n), new, params)
