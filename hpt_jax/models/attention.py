"""Grouped-query softmax attention, optionally in query chunks; and the cached (decode) variant.

Full attention materialises float32 scores [B, K, G, T, S]: at HPT's 9216-token sequences that is
~9.5 GB per row and layer for Qwen2.5-Math-7B. With `query_chunk=C` the queries are processed C at a
time under `jax.checkpoint`, so forward *and* backward hold scores for one chunk only ([B, K, G, C, S]);
the price is recomputing each chunk's scores in the backward pass. Results equal full attention up
to float rounding (same float32 softmax per query row).

Cached attention (`attend_cached`) never writes into the cache: the T new queries attend the past
slots of a read-only `[B, K, S, H]` cache slice and, separately, the T new keys, with ONE softmax over
both score blocks. The caller writes the new keys into the cache once for all layers afterwards, so
the decode step does no per-layer copy of the cache (see `transformer.CausalLM._forward`).
"""

from __future__ import annotations

from typing import Callable

import chex
import jax
import jax.numpy as jnp

from hpt_jax.typing import Array

# finfo.min rather than -inf: a query with no valid key gets a uniform average instead of NaN.
_MASKED = jnp.finfo(jnp.float32).min


def _attend_block(q: Array, keys: Array, values: Array, mask: Array) -> Array:
  """q: [B, T, K, G, H], keys/values: [B, S, K, H], mask: [B, T, S] -> [B, T, K, G, H]."""
  h = q.shape[-1]
  scores = jnp.einsum("btkgh,bskh->bkgts", q, keys,
                      preferred_element_type=jnp.float32) * (h ** -0.5)   # [B, K, G, T, S]
  scores = jnp.where(mask[:, None, None], scores, _MASKED)
  probs = jax.nn.softmax(scores, axis=-1).astype(values.dtype)
  return jnp.einsum("bkgts,bskh->btkgh", probs, values)


def _in_query_chunks(block: Callable[[Array, Array], Array], qg: Array, mask: Array,
                     query_chunk: int | None) -> Array:
  """Applies `block(q, mask)` to all queries at once, or `query_chunk` at a time under checkpoint.

  Args:
    block: (q [B, C, K, G, H], mask [B, C, ...]) -> [B, C, K, G, H].
    qg: [B, T, K, G, H].
    mask: [B, T, ...] the query-dependent mask (padded queries attend nothing).
    query_chunk: chunk size C, or None. T need not divide.
  Returns:
    [B, T, K, G, H].
  """
  b, t = qg.shape[:2]
  if query_chunk is None or query_chunk >= t:
    return block(qg, mask)
  chunks = -(-t // query_chunk)
  pad = chunks * query_chunk - t
  # Padded queries attend nothing (all-False mask rows) and are sliced off below.
  pad_rows = lambda x: jnp.pad(x, ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2))
  split = lambda x: x.reshape(b, chunks, query_chunk, *x.shape[2:]).swapaxes(0, 1)
  out = jax.lax.map(jax.checkpoint(lambda args: block(*args)),
                    (split(pad_rows(qg)), split(pad_rows(mask))))        # [C#, B, C, K, G, H]
  out = out.swapaxes(0, 1).reshape(b, chunks * query_chunk, *qg.shape[2:])
  return out[:, :t]


def _group_queries(q: Array, k_heads: int) -> Array:
  """[B, T, N, H] -> [B, T, K, G, H] (query head n uses KV head n // G, as HF's repeat_kv)."""
  b, t, n, h = q.shape
  if n % k_heads:
    raise ValueError(f"attend: {n} query heads not a multiple of {k_heads} KV heads")
  return q.reshape(b, t, k_heads, n // k_heads, h)


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
  chex.assert_rank([q, keys, values, mask], [4, 4, 4, 3])
  chex.assert_shape(mask, (b, t, keys.shape[1]))
  qg = _group_queries(q, keys.shape[2])
  block = lambda qc, mc: _attend_block(qc, keys, values, mc)
  return _in_query_chunks(block, qg, mask, query_chunk).reshape(b, t, n, h)


def _bmm(a: Array, b: Array, *, contract_b: int) -> Array:
  """Batched matmul over the two leading (B, K) axes: a [B, K, M, C] with b [B, K, C, N]
  (`contract_b=2`) or b [B, K, N, C] (`contract_b=3`) -> [B, K, M, N] float32.

  Spelled as a canonical dot_general (batch dims first, `a` contracted on its last axis) so that
  XLA:CPU hands it to its fast matmul library instead of a transposing fallback.
  """
  dims = (((3,), (contract_b,)), ((0, 1), (0, 1)))
  return jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


def _attend_cached_block(q: Array, k_new: Array, v_new: Array, new_mask: Array, past_k: Array,
                         past_v: Array, past_mask: Array) -> Array:
  """One softmax over [past slots | new tokens] without concatenating the keys.

  q: [B, T, K, G, H]; k_new/v_new: [B, U, K, H]; new_mask: [B, T, U]; past_k/past_v: [B, K, S, H];
  past_mask: [B, S]. Returns [B, T, K, G, H].
  """
  b, t, k, g, h = q.shape
  u = k_new.shape[1]
  # Queries as [B, K, G*T, H] (g major): for decoding (T = 1) every layout change here is a reshape.
  qk = q.transpose(0, 2, 3, 1, 4).reshape(b, k, g * t, h)
  k_new = k_new.transpose(0, 2, 1, 3)                                       # [B, K, U, H]
  v_new = v_new.transpose(0, 2, 1, 3)
  scale = h ** -0.5
  past = _bmm(qk, past_k, contract_b=3) * scale                             # [B, K, G*T, S]
  new = _bmm(qk, k_new, contract_b=3) * scale                               # [B, K, G*T, U]
  past = jnp.where(past_mask[:, None, None, :], past, _MASKED)
  new_mask = jnp.broadcast_to(new_mask[:, None], (b, g, t, u)).reshape(b, 1, g * t, u)
  new = jnp.where(new_mask, new, _MASKED)
  top = jnp.maximum(jnp.max(past, axis=-1, keepdims=True), jnp.max(new, axis=-1, keepdims=True))
  past = jnp.exp(past - top)
  new = jnp.exp(new - top)
  total = jnp.sum(past, axis=-1, keepdims=True) + jnp.sum(new, axis=-1, keepdims=True)
  out = (_bmm((past / total).astype(past_v.dtype), past_v, contract_b=2)
         + _bmm((new / total).astype(v_new.dtype), v_new, contract_b=2))     # [B, K, G*T, H]
  return out.astype(q.dtype).reshape(b, k, g, t, h).transpose(0, 3, 1, 2, 4)


def attend_cached(q: Array, k_new: Array, v_new: Array, new_mask: Array, *, past_k: Array,
                  past_v: Array, past_mask: Array, query_chunk: int | None = None) -> Array:
  """Attention of T new queries over a read-only cache slice plus the T new keys.

  Equals `attend` over the keys [past slots, new tokens] with the mask [past_mask | new_mask]
  (same float32 softmax, up to summation order).

  Args:
    q: [B, T, N, H] (RoPE applied).
    k_new, v_new: [B, T, K, H] the new tokens' keys / values.
    new_mask: [B, T, T] bool, query t may attend new token u (causal and real).
    past_k, past_v: [B, K, S, H] this layer's cache; slots where `past_mask` is False are ignored.
    past_mask: [B, S] bool, True = the slot holds an earlier real token (the same for every query).
    query_chunk: as in `attend`.
  Returns:
    [B, T, N, H] in q's dtype.
  """
  b, t, n, h = q.shape
  chex.assert_rank([q, k_new, v_new, new_mask, past_k, past_v, past_mask], [4, 4, 4, 3, 4, 4, 2])
  chex.assert_equal_shape([k_new, v_new])
  chex.assert_equal_shape([past_k, past_v])
  chex.assert_shape(new_mask, (b, t, t))
  chex.assert_shape(past_mask, (b, past_k.shape[2]))
  qg = _group_queries(q, k_new.shape[2])

  def block(qc, mc):
    return _attend_cached_block(qc, k_new, v_new, mc, past_k, past_v, past_mask)

  return _in_query_chunks(block, qg, new_mask, query_chunk).reshape(b, t, n, h).astype(q.dtype)
