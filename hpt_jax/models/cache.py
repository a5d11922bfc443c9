"""The decoding KV cache: a plain pytree the sampler threads through its loop.

Slots are positions in the cache buffer, not RoPE positions: a left-padded prompt occupies slots
[0, P) with its pad slots marked False in `key_mask`, while its RoPE positions start at 0 at the first
real token. Causality is by slot (a query at slot s sees valid keys at slots <= s).

Layout: one `[B, K, S, H]` buffer per layer (a tuple of L arrays, not one stacked [L, ...] array).
  * Separate buffers: XLA:CPU copies any slice of a stacked array, so a stacked cache cost a copy of
    every layer's cache per decode step; separate buffers are read by attention as they are and
    updated in place by `dynamic_update_slice` inside the sampler's while loop.
  * [B, K, S, H]: each KV head's slots are one contiguous [S, H] matrix, so decode attention is a
    plain batched matmul over (B, K) with no transpose of the cache.
"""

from __future__ import annotations

import flax.struct
import jax.numpy as jnp

from hpt_jax.models.config import ModelConfig
from hpt_jax.typing import Array


@flax.struct.dataclass
class KVCache:
  k: tuple[Array, ...]  # L x [B, K, S, H] keys after RoPE
  v: tuple[Array, ...]  # L x [B, K, S, H]
  key_mask: Array       # [B, S] bool, True = slot holds a real token
  index: Array          # [] int32, next free slot

  @property
  def length(self) -> int:
    """S, the static cache length."""
    return self.key_mask.shape[1]

  @property
  def num_layers(self) -> int:
    return len(self.k)

  def repeat_rows(self, n: int) -> "KVCache":
    """Every row repeated n times (copies adjacent), e.g. one prefill for n samples of a prompt."""
    rows = lambda x: jnp.repeat(x, n, axis=0)
    return self.replace(k=tuple(map(rows, self.k)), v=tuple(map(rows, self.v)),
                        key_mask=rows(self.key_mask))

  def grow(self, length: int) -> "KVCache":
    """The same cache with `length` >= S slots: slots [S, length) empty (zeros, key_mask False).

    A sampler decodes in phases on caches just long enough for each phase (decode attention reads
    every slot of the buffer), growing the cache in between.
    """
    extra = length - self.length
    if extra < 0:
      raise ValueError(f"KVCache.grow: length {length} is shorter than the cache's {self.length} slots")
    pad = lambda x: jnp.pad(x, ((0, 0), (0, 0), (0, extra), (0, 0)))
    return self.replace(k=tuple(map(pad, self.k)), v=tuple(map(pad, self.v)),
                        key_mask=jnp.pad(self.key_mask, ((0, 0), (0, extra))))


def init_cache(config: ModelConfig, *, batch: int, length: int, dtype=None) -> KVCache:
  """An empty cache for `batch` rows of `length` slots (dtype defaults to the config's compute dtype)."""
  dtype = dtype or config.dtype
  shape = (batch, config.num_kv_heads, length, config.head_dim)
  layers = config.num_layers
  return KVCache(
      k=tuple(jnp.zeros(shape, dtype) for _ in range(layers)),
      v=tuple(jnp.zeros(shape, dtype) for _ in range(layers)),
      key_mask=jnp.zeros((batch, length), bool),
      index=jnp.zeros((), jnp.int32),
  )
