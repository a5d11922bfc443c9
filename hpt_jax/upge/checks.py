"""Input validation shared by the upge functions.

The rank/shape/dtype checks are chex assertions (free under `jax.jit`); a failed one is re-raised as a
`ValueError` whose message starts with the name of the bad argument, so a caller with a dozen arrays in
flight sees at once which one is wrong (chex's own message does not name the argument). Shape and dtype checks are static and
also run under `jax.jit`; the {0, 1} value check of a non-boolean mask needs concrete values and is
skipped for tracers (a boolean mask is always fine).
"""

from collections.abc import Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from hpt_jax.typing import Array, ArrayLike


def _array(x: ArrayLike):
  return x if hasattr(x, "shape") and hasattr(x, "dtype") else np.asarray(x)


def _passes(assertion, *args) -> bool:
  try:
    assertion(*args)
  except AssertionError:
    return False
  return True


def check_rank(x: ArrayLike, *, rank: int | Sequence[int], name: str) -> None:
  """Raises if `x` does not have one of the allowed ranks."""
  ranks = (rank,) if isinstance(rank, int) else tuple(rank)
  if not _passes(chex.assert_rank, _array(x), set(ranks)):
    raise ValueError(f"{name}: expected rank {' or '.join(map(str, ranks))}, got shape {np.shape(x)}")


def check_shape(x: ArrayLike, *, shape: Sequence[int], name: str) -> None:
  """Raises if `x` does not have exactly `shape`."""
  if not _passes(chex.assert_shape, _array(x), tuple(shape)):
    raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(np.shape(x))}")


def check_floating(x: ArrayLike, *, name: str) -> None:
  """Raises if `x` is not a floating-point array (log-probs, rewards, losses)."""
  if not _passes(chex.assert_type, _array(x), float):
    raise ValueError(f"{name}: expected a floating dtype, got {jnp.result_type(x)}")


def check_integer(x: ArrayLike, *, name: str) -> None:
  """Raises if `x` is not an integer array (group ids, token ids)."""
  if not _passes(chex.assert_type, _array(x), int):
    raise ValueError(f"{name}: expected an integer dtype, got {jnp.result_type(x)}")


def _is_concrete(x: ArrayLike) -> bool:
  return not isinstance(x, jax.core.Tracer)


def as_mask(mask: ArrayLike, *, shape: Sequence[int] | None = None, name: str) -> Array:
  """Validates a mask and returns it as a boolean array.

  Args:
    mask: boolean, or numeric with values in {0, 1}.
    shape: the required shape, if any.
    name: the argument name used in error messages.

  Returns:
    The mask as `bool`, same shape.
  """
  if shape is not None:
    check_shape(mask, shape=shape, name=name)
  dtype = jnp.result_type(mask)
  if dtype == jnp.bool_:
    return jnp.asarray(mask)
  if _is_concrete(mask):
    values = np.asarray(mask)
    bad = (values != 0) & (values != 1)
    if bad.any():
      where = tuple(int(i) for i in np.argwhere(bad)[0])
      raise ValueError(f"{name}: must be boolean or in {{0, 1}}; found {values[where].item()!r} at index {where}")
  return jnp.asarray(mask) != 0


def check_group_ids(group_ids: ArrayLike, *, num_groups: int, batch: int, name: str = "group_ids") -> None:
  """Raises unless `group_ids` is an integer [B] vector with (concrete) values in [0, num_groups)."""
  check_shape(group_ids, shape=(batch,), name=name)
  check_integer(group_ids, name=name)
  if num_groups < 1:
    raise ValueError(f"num_groups: must be >= 1, got {num_groups}")
  if _is_concrete(group_ids) and batch:
    ids = np.asarray(group_ids)
    if ids.min() < 0 or ids.max() >= num_groups:
      raise ValueError(f"{name}: values must lie in [0, num_groups={num_groups}), got range "
                       f"[{ids.min()}, {ids.max()}]")
