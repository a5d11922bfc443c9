"""Response packing: a shared-prompt micro-batch's per-token work on its real response tokens only.

A micro-batch holds Bm responses in R slots each; rows that end early (EOS) leave padded slots. With g
granules the model runs the micro-batch's real tokens gathered into C = k/g of its Bm·R slots
(`shared_prefix.suffix_hidden(packed_tokens=C)`), k the smallest that holds them. C must be static, so
every capacity is a branch of one `lax.switch` and the branch is picked at run time from the
micro-batch's real token count: one compiled program serves every batch (g branches of the micro-batch
body in it), nothing recompiles when lengths change. The full capacity runs the unpacked pass (no
gathers). The packing gathers across the rows of a micro-batch, so the rows must not be split over
devices.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh


def check_granules(granules: int, mesh: Mesh | None, *, owner: str) -> None:
  """Raises ValueError naming `owner` for g < 0, or g > 0 on a mesh that splits rows (data × fsdp)."""
  if granules < 0:
    raise ValueError(f"{owner}: response_granules must be >= 0, got {granules}")
  if granules and mesh is not None and mesh.shape.get("data", 1) * mesh.shape.get("fsdp", 1) > 1:
    raise ValueError(f"{owner}: response_granules={granules} needs an unsplit batch, but the mesh splits "
                     f"rows over data x fsdp = {dict(mesh.shape)}; set it to 0 on this mesh")


def capacities(slots: int, granules: int) -> tuple[int, ...]:
  """The capacities k/g of a micro-batch's `slots` = Bm·R response slots, k = 1..g (rounded up).

  Returns:
    Strictly increasing capacities, the last one `slots`.
  """
  if granules < 1:
    raise ValueError(f"granules must be >= 1, got {granules}")
  size = -(-slots // granules)
  return tuple(sorted({min(slots, size * k) for k in range(1, granules + 1)}))


def branch(caps: tuple[int, ...], real_tokens):
  """The index of the first (smallest) capacity >= `real_tokens` (NumPy or JAX values)."""
  xp = jnp if isinstance(real_tokens, jax.Array) else np
  return xp.searchsorted(xp.asarray(caps), real_tokens)


def batch_capacities(batch, granules: int) -> tuple[int, ...] | None:
  """The capacities of a `MicroBatches`' micro-batches (None: not packed: g = 0 or plain rows)."""
  if not granules or batch.prefix_tokens is None:
    return None
  return capacities(batch.tokens.shape[1] * batch.tokens.shape[2], granules)


def by_capacity(fn_at: Callable[[int | None], Callable], caps: tuple[int, ...] | None) -> Callable:
  """`f(params, prefix, mb, *rest)` running `fn_at(C)` with the micro-batch's smallest capacity C.

  Args:
    fn_at: packed_tokens (an int, or None for every slot) -> a function of (params, prefix, mb, *rest).
    caps: `batch_capacities(...)`; None runs `fn_at(None)` always.
  """
  if caps is None:
    return fn_at(None)
  branches = [fn_at(c) for c in caps[:-1]] + [fn_at(None)]  # the full capacity: unpacked, no gathers

  def run(params: Any, prefix: Any, mb: Any, *rest):
    real = jnp.sum(mb.attention_mask, dtype=jnp.int32)
    return jax.lax.switch(branch(caps, real), branches, params, prefix, mb, *rest)
  return run
