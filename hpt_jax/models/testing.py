"""Small helpers for tests of the model and of code built on it (sampler, train step).

`padded_batch` makes the left/right-padded token batches the model contract describes; `forward_fn`
jits the functional (split/merge) forward that train and sampling code use.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hpt_jax.typing import Array


def padded_batch(rng: np.random.Generator, *, vocab_size: int, length: int,
                 left_pad: Sequence[int], right_pad: Sequence[int]):
  """Random tokens with per-row left/right padding.

  Args:
    rng: numpy Generator.
    vocab_size: tokens are drawn from [1, vocab_size); pad slots hold 0.
    length: T.
    left_pad, right_pad: per-row pad counts (one entry per row, B rows).
  Returns:
    (tokens [B, T] int32, positions [B, T] int32, mask [B, T] bool) as numpy arrays; positions are
    `cumsum(mask) - 1` clipped at 0, so real tokens count from 0 whatever the padding.
  """
  if len(left_pad) != len(right_pad):
    raise ValueError(f"left_pad has {len(left_pad)} rows, right_pad {len(right_pad)}")
  rows = len(left_pad)
  cols = np.arange(length)[None, :]
  mask = (cols >= np.asarray(left_pad)[:, None]) & (cols < length - np.asarray(right_pad)[:, None])
  tokens = np.where(mask, rng.integers(1, vocab_size, (rows, length)), 0).astype(np.int32)
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
  return tokens, positions, mask


def forward_fn(graphdef: nnx.GraphDef):
  """jit(params, tokens, positions, mask) -> float32 logits [B, T, V] through nnx.merge."""
  @jax.jit
  def forward(params, tokens: Array, positions: Array, mask: Array) -> Array:
    model = nnx.merge(graphdef, params)
    hidden, _ = model(tokens, positions=positions, attention_mask=mask)
    return model.logits(hidden)
  return forward


def valid_max_abs_diff(a, b, mask) -> float:
  """max |a - b| over the positions where mask [B, T] is True (a, b: [B, T, ...])."""
  a, b, mask = np.asarray(a, np.float64), np.asarray(b, np.float64), np.asarray(mask)
  mask = mask.reshape(mask.shape + (1,) * (a.ndim - mask.ndim))
  return float(np.max(np.where(mask, np.abs(a - b), 0.0)))


def jnp_batch(*arrays):
  return tuple(jnp.asarray(x) for x in arrays)
