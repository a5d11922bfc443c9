"""A sampler's prefill that skips padded prompt slots: per-token work on the packed real tokens only.

A left-padded prompt batch [B, P] is mostly padding when prompt lengths vary (prompts of 8-32 tokens in
a bucket of 32: ~37 % of the slots). Everything except attention is per token (norms, projections,
RoPE, the MLP), so it runs on the R real tokens gathered into rows [R, D] (R >= the real count,
static: a bucket the caller picks); attention alone scatters the queries back to the padded [B, P]
layout and attends the cache there, exactly as the unpacked prefill (`CausalLM.__call__` with a cache
and `last_only=True`), which it equals up to float rounding.

Letters: B rows, P prompt slots, R packed rows, S cache slots, D width, N / K query / KV heads, H head
dim.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from hpt_jax.models import rope
from hpt_jax.models.attention import attend_cache
from hpt_jax.models.cache import KVCache, write_layer
from hpt_jax.models.config import ModelConfig
from hpt_jax.models.transformer import CachedLayer, CausalLM, _attention_mask, rms_norm
from hpt_jax.typing import Array


def packed_indices(attention_mask: Array, packed_tokens: int) -> tuple[Array, Array]:
  """Flat [B * P] indices of the real tokens, row-major, padded to `packed_tokens` entries.

  Args:
    attention_mask: [B, P] bool, True = real token.
    packed_tokens: R, static; at least the number of real tokens (more are filled with index 0).

  Returns:
    (idx [R] int32, valid [R] bool: the entry is a real token).
  """
  flat = attention_mask.reshape(-1)
  (idx,) = jnp.nonzero(flat, size=packed_tokens, fill_value=0)
  valid = jnp.arange(packed_tokens) < jnp.sum(flat)
  return idx.astype(jnp.int32), valid


def slot_rows(attention_mask: Array, packed_tokens: int) -> Array:
  """The inverse of `packed_indices`: each flat [B * P] slot's packed row, R for a padded slot.

  Args:
    attention_mask: [B, P] bool, True = real token.
    packed_tokens: R.
  Returns:
    [B * P] int32: slot j holds packed row `slots[j]` (< R), or R (no row: padding).
  """
  flat = attention_mask.reshape(-1)
  rows = jnp.cumsum(flat, dtype=jnp.int32) - 1
  return jnp.where(flat & (rows < packed_tokens), rows, packed_tokens).astype(jnp.int32)


def _packed_layer(w: CachedLayer, x: Array, cos: Array, sin: Array, mask: Array, idx: Array,
                  slots: Array, cached: tuple[Array, Array, Array], *, config: ModelConfig,
                  shape: tuple[int, int], last_rows: Array | None) -> tuple[Array, tuple[Array, Array]]:
  """`transformer._cached_layer` (prefill) with the per-token work on packed rows.

  Args:
    w: the layer's weights.
    x: [R, D] packed residual stream.
    cos, sin: [R, H] rotation of the packed tokens.
    mask: [B, P, S] bool attention mask in the padded layout.
    idx: `packed_indices` (the packed rows' flat slots); slots: `slot_rows` (the inverse).
    cached: (k_layer [B, K, H, S], v_layer [B, K, S, H], index []) (the `KVCache` layouts).
    shape: (B, P).
    last_rows: [B] packed rows of each row's last prompt slot: the layer then returns only those rows'
      output ([B, D]; a sampler's last layer); None returns all R.
  Returns:
    (x [R, D] or [B, D], updated (k_layer, v_layer)).
  """
  b, p = shape
  n, kv, h = config.num_heads, config.num_kv_heads, config.head_dim
  r = x.shape[0]

  def dense(y, kernel, bias):
    out = y @ kernel
    return out if bias is None else out + bias

  def unpack(y):  # [R, ...] -> [B, P, ...], padded slots 0 (filler rows are never read)
    # A gather per slot: one pass over the output (a scatter into zeros cost a masked copy of y, a
    # zero fill, the scatter and a copy: ~4 passes).
    flat = jnp.take(y, slots, axis=0, mode="fill", fill_value=0)
    return flat.reshape((b, p) + y.shape[1:])

  normed = rms_norm(x, w.input_norm, eps=config.rms_norm_eps)
  rot = lambda y: rope.apply_rope(y[None], cos[None], sin[None])[0]
  q = rot(dense(normed, w.q, w.q_bias).reshape(r, n, h))
  k = rot(dense(normed, w.k, w.k_bias).reshape(r, kv, h))
  v = dense(normed, w.v, w.v_bias).reshape(r, kv, h)
  k_layer, v_layer, index = cached
  k_layer, v_layer = write_layer(k_layer, v_layer, unpack(k), unpack(v), index)   # [R, K, H] -> [B, P, K, H]
  if last_rows is None:
    out = attend_cache(unpack(q), k_layer.astype(q.dtype), v_layer.astype(q.dtype), mask,
                       query_chunk=config.attention_query_chunk)          # [B, P, N, H]
    out = out.reshape(b * p, n * h)[idx]                                  # [R, N*H]
  else:
    # Only each row's last prompt slot (always a real token under left padding) goes on.
    q_last = q[last_rows][:, None]                                        # [B, 1, N, H]
    out = attend_cache(q_last, k_layer.astype(q.dtype), v_layer.astype(q.dtype), mask[:, -1:])
    out, x = out.reshape(b, n * h), x[last_rows]
  x = x + dense(out, w.o, w.o_bias)
  normed = rms_norm(x, w.post_norm, eps=config.rms_norm_eps)
  gate_up = jnp.einsum("rd,dcf->rcf", normed, w.gate_up)                   # [R, 2, F]
  x = x + (jax.nn.silu(gate_up[:, 0]) * gate_up[:, 1]) @ w.down
  return x, (k_layer, v_layer)


def packed_prefill(model: CausalLM, tokens: Array, *, positions: Array, attention_mask: Array,
                   cache: KVCache, cached_layers: tuple[CachedLayer, ...], packed_tokens: int
                   ) -> tuple[Array, KVCache]:
  """`model(tokens, ..., cache=cache, last_only=True, cached_layers=...)` on packed real tokens.

  Args:
    model: the `CausalLM`.
    tokens, positions: [B, P] int32 (left-padded prompts).
    attention_mask: [B, P] bool; every row's last slot must be real (left padding).
    cache: the cache the P slots are written to at its index.
    cached_layers: `model.cached_layers()`.
    packed_tokens: R >= the number of real tokens (static). A smaller count silently drops tokens,
      so the caller checks it on the host (the sampler does).
  Returns:
    (hidden [B, 1, D] of the last slot after the final norm, the cache advanced by P).
  """
  config = model.config
  chex.assert_rank([tokens, positions, attention_mask], 2)
  chex.assert_equal_shape([tokens, positions, attention_mask])
  if cache.num_layers != config.num_layers or len(cached_layers) != config.num_layers:
    raise ValueError(f"packed_prefill: cache has {cache.num_layers} layers, cached_layers "
                     f"{len(cached_layers)}, the model {config.num_layers}")
  b, p = tokens.shape
  if not 0 < packed_tokens <= b * p:
    raise ValueError(f"packed_prefill: packed_tokens must be in [1, {b * p}], got {packed_tokens}")
  attention_mask = attention_mask.astype(bool)
  idx, _ = packed_indices(attention_mask, packed_tokens)
  slots = slot_rows(attention_mask, packed_tokens)
  x = jnp.take(model.embed_tokens.embedding[...], tokens.reshape(-1)[idx], axis=0).astype(config.dtype)
  inv_freq = rope.inverse_frequencies(head_dim=config.head_dim, theta=config.rope_theta,
                                      scaling=config.rope_scaling)
  cos, sin = rope.rope_angles(positions.reshape(1, -1)[:, idx], inv_freq)  # [1, R, H]
  mask, key_mask = _attention_mask(attention_mask, cache)
  # Row i's last slot is its last real token: packed row (real tokens in rows <= i) - 1.
  last_rows = jnp.cumsum(jnp.sum(attention_mask, axis=1, dtype=jnp.int32)) - 1
  new_k, new_v = [], []
  for i, weights in enumerate(cached_layers):
    last = last_rows if i == config.num_layers - 1 else None
    x, (k_layer, v_layer) = _packed_layer(
        weights, x, cos[0], sin[0], mask, idx, slots, (cache.k[i], cache.v[i], cache.index),
        config=config, shape=(b, p), last_rows=last)
    new_k.append(k_layer)
    new_v.append(v_layer)
  new_cache = KVCache(k=tuple(new_k), v=tuple(new_v), key_mask=key_mask, index=cache.index + p)
  return model.norm(x[:, None]), new_cache
