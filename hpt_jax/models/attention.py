"""Grouped-query softmax attention over an explicit [B, T, S] mask, optionally in query chunks.

Full attention materialises float32 scores [B, K, G, T, S]: at HPT's 9216-token sequences that is
~9.5 GB per row and layer for Qwen2.5-Math-7B. With `query_chunk=C` the queries are processed C at a
time under `jax.checkpoint`, so forward *and* backward hold scores for one chunk only ([B, K, G, C, S]);
the price is recomputing each chunk's scores in the backward pass. Results equal full attention up
to float rounding (same float32 softmax per query row).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from hpt_jax.typing import Array


def _attend_block(q: Array, keys: Array, values: Array, mask: Array) -> Array:
  """q: [B, T, K, G, H], keys/values: [B, S, K, H], mask: [B, T, S] -> [B, T, K, G, H]."""
  h = q.shape[-1]
  scores = jnp.einsum("btkgh,bskh->bkgts", q, keys,
                      preferred_element_type=jnp.float32) * (h ** -0.5)   # [B, K, G, T, S]
  # finfo.min rather than -inf: a query with no valid key gets a uniform average instead of NaN.
  scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(values.dtype)
  return jnp.einsum("bkgts,bskh->btkgh", probs, values)


def attend(q: Array, keys: Array, values: Array, mask: Array, *,
           query_chunk: int | None = None) -> Array:
  """softmax(q k^T / sqrt(H) masked) v with K KV heads shared by groups of G = N / K query heads.

  Args:
    q: [B, T, N, H] (RoPE applied).
    keys, values: [B, S, K, H].
    mask: [B, T, S] bool, True = query t may attend key slot s.
    query_chunk: process queries this many at a time (None: all at once). T need not divide.
  Returns:
    [B, T, N, H] in q's dtype. A query with no valid key gets the uniform average (finite, and
    ignored downstream because such queries are padding).
  """
  b, t, n, h = q.shape
  k_heads = keys.shape[2]
  chex.assert_rank([q, keys, values, mask], [4, 4, 4, 3])
  chex.assert_shape(mask, (b, t, keys.shape[1]))
  if n % k_heads:
    raise ValueError(f"attend: {n} query heads not a multiple of {k_heads} KV heads")
  qg = q.reshape(b, t, k_heads, n // k_heads, h)                          # [B, T, K, G, H]
  if query_chunk is None or query_chunk >= t:
    return _attend_block(qg, keys, values, mask).reshape(b, t, n, h)

  chunks = -(-t // query_chunk)
  pad = chunks * query_chunk - t
  # Padded queries attend nothing (all-False mask rows) and are sliced off below.
  qg = jnp.pad(qg, ((0, 0), (0, pad), (0, 0), (0, 0), (0, 0)))
  mask = jnp.pad(mask, ((0, 0), (0, pad), (0, 0)))
  qg = qg.reshape(b, chunks, query_chunk, *qg.shape[2:]).swapaxes(0, 1)  # [C#, B, C, K, G, H]
  mask = mask.reshape(b, chunks, query_chunk, -1).swapaxes(0, 1)         # [C#, B, C, S]
  block = jax.checkpoint(lambda args: _attend_block(args[0], keys, values, args[1]))
  out = jax.lax.map(block, (qg, mask))                                   # [C#, B, C, K, G, H]
  out = out.swapaxes(0, 1).reshape(b, chunks * query_chunk, n, h)
  return out[:, :t]
