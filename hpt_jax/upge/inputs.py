"""`LossInputs`: the arrays of one micro-batch that every named algorithm consumes.

The train step fills the fields it has; each algorithm names the optional fields it needs and
`prepare` raises a `ValueError` naming a missing or malformed field. `prepare` also replaces every
masked-out entry by 0 with `where`, so padding holding -inf/NaN (or huge stale log-ratios) cannot
reach the loss or its gradient: an all-masked batch gives loss 0 and exactly zero gradients.
"""

from typing import NamedTuple

import jax.numpy as jnp

from hpt_jax.typing import Array
from hpt_jax.upge import checks


class LossInputs(NamedTuple):
  """Per-micro-batch arrays (a pytree, so it passes through `jit`).

  Attributes:
    logp: [B, T] log π_θ of the response tokens, carries the gradient.
    response_mask: [B, T] bool or {0, 1}, right padded.
    advantages: [B] or [B, T] Â (constant).
    old_logp: [B, T] log π_θold (constant); for one on-policy update pass `stop_gradient(logp)`.
    is_demo: [B] bool, True for demonstration (off-policy) rows.
    entropy: [B, T] token entropy (with gradient when the entropy bonus should train it).
    scores: [B] outcome reward per row (SRFT's correctness test).
  """
  logp: Array
  response_mask: Array
  advantages: Array | None = None
  old_logp: Array | None = None
  is_demo: Array | None = None
  entropy: Array | None = None
  scores: Array | None = None


class Prepared(NamedTuple):
  """Validated inputs: bool masks, [B, T] advantages, masked entries zeroed.

  Attributes:
    logp, old_logp, advantages, entropy: [B, T] (None where not supplied).
    mask: [B, T] bool; demo: [B] bool (all False when `is_demo` is None); scores: [B] or None.
    on_mask, demo_mask: [B, T] bool, `mask` restricted to on-policy / demonstration rows.
  """
  logp: Array
  mask: Array
  advantages: Array | None
  old_logp: Array | None
  entropy: Array | None
  scores: Array | None
  demo: Array
  on_mask: Array
  demo_mask: Array


def prepare(inputs: LossInputs, *, needs: tuple[str, ...], algorithm: str) -> Prepared:
  """Validates `inputs` for an algorithm that requires the fields in `needs`.

  Args:
    inputs: the micro-batch.
    needs: names of optional `LossInputs` fields that must be present.
    algorithm: used in error messages.

  Returns:
    `Prepared` arrays.
  """
  if not isinstance(inputs, LossInputs):
    raise ValueError(f"inputs: expected LossInputs, got {type(inputs).__name__}")
  for field in needs:
    if getattr(inputs, field) is None:
      raise ValueError(f"inputs.{field}: required by {algorithm}")
  logp = inputs.logp
  checks.check_rank(logp, rank=2, name="inputs.logp")
  checks.check_floating(logp, name="inputs.logp")
  shape = logp.shape
  mask = checks.as_mask(inputs.response_mask, shape=shape, name="inputs.response_mask")

  def token_array(value, name):
    if value is None:
      return None
    checks.check_shape(value, shape=shape, name=f"inputs.{name}")
    checks.check_floating(value, name=f"inputs.{name}")
    return jnp.where(mask, value, 0.0)

  advantages = inputs.advantages
  if advantages is not None:
    checks.check_rank(advantages, rank=(1, 2), name="inputs.advantages")
    if jnp.ndim(advantages) == 1:
      checks.check_shape(advantages, shape=shape[:1], name="inputs.advantages")
      advantages = jnp.broadcast_to(jnp.asarray(advantages)[:, None], shape)
  scores = inputs.scores
  if scores is not None:
    checks.check_shape(scores, shape=shape[:1], name="inputs.scores")
    checks.check_floating(scores, name="inputs.scores")
  if inputs.is_demo is None:
    demo = jnp.zeros(shape[:1], bool)
  else:
    demo = checks.as_mask(inputs.is_demo, shape=shape[:1], name="inputs.is_demo")
  return Prepared(
      logp=jnp.where(mask, logp, 0.0),
      mask=mask,
      advantages=token_array(advantages, "advantages"),
      old_logp=token_array(inputs.old_logp, "old_logp"),
      entropy=token_array(inputs.entropy, "entropy"),
      scores=scores,
      demo=demo,
      on_mask=mask & ~demo[:, None],
      demo_mask=mask & demo[:, None],
  )
