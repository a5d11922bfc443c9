"""Small helpers for tests of the model and of code built on it (sampler, train step).

`random_model` fills a model from host-side NumPy draws (no XLA compile, unlike NNX initialisers,
and with non-trivial biases and norm scales so a mis-wired bias or norm cannot hide);
`padded_batch` makes the left/right-padded token batches the model contract describes; `forward_fn`
jits the functional (split/merge) forward that train and sampling code use.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hpt_jax.models.config import ModelConfig
from hpt_jax.models.factory import abstract_model
from hpt_jax.models.transformer import CausalLM
from hpt_jax.typing import Array


def random_model(config: ModelConfig, *, seed: int = 0, scale: float = 0.02) -> CausalLM:
  """A CausalLM with N(0, scale) kernels/embeddings/biases and N(1, 0.1) norm scales (NumPy draws)."""
  rng = np.random.default_rng(seed)
  graphdef, state = nnx.split(abstract_model(config))
  filled = []
  for path, variable in nnx.to_flat_state(state):
    centre, spread = (1.0, 0.1) if path[-1] == "scale" else (0.0, scale)
    value = rng.normal(centre, spread, variable.shape).astype(variable.dtype)
    filled.append((path, variable.replace(jnp.asarray(value))))
  return nnx.merge(graphdef, nnx.from_flat_state(filled))


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


def numpy_attention(q, k, v, mask) -> np.ndarray:
  """A float64 NumPy reference of grouped-query attention (test oracle).

  q [B, T, N, H], k/v [B, S, K, H], mask [B, T, S] (True = query t may attend key s). Per head n, KV head
  n // (N / K): softmax over the allowed keys of q.k / sqrt(H), then the weighted v. A query with no
  allowed key gives zeros. Returns [B, T, N, H].
  """
  b, t, n, h = q.shape
  group = n // k.shape[2]
  out = np.zeros((b, t, n, h))
  for bi in range(b):
    for ni in range(n):
      scores = q[bi, :, ni] @ k[bi, :, ni // group].T / np.sqrt(h)        # [T, S]
      scores = np.where(mask[bi], scores, -np.inf)
      for ti in range(t):
        if mask[bi, ti].any():
          w = np.exp(scores[ti] - scores[ti].max())
          out[bi, ti, ni] = (w / w.sum()) @ v[bi, :, ni // group]
  return out
