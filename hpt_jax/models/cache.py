"""The decoding KV cache: a plain pytree the sampler threads through its loop.

Slots are positions in the cache buffer, not RoPE positions: a left-padded prompt occupies slots
[0, P) with its pad slots marked False in `key_mask`, while its RoPE positions start at 0 at the first
real token. Causality is by slot (a query at slot s sees valid keys at slots <= s).
"""

from __future__ import annotations

import flax.struct
import jax.numpy as jnp

from hpt_jax.models.config import ModelConfig
from hpt_jax.typing import Array


@flax.struct.dataclass
class KVCache:
  k: Array         # [L, B, S, K, H] keys after RoPE
  v: Array         # [L, B, S, K, H]
  key_mask: Array  # [B, S] bool, True = slot holds a real token
  index: Array     # [] int32, next free slot

  @property
  def length(self) -> int:
    """S, the static cache length."""
    return self.k.shape[2]


def init_cache(config: ModelConfig, *, batch: int, length: int, dtype=None) -> KVCache:
  """An empty cache for `batch` rows of `length` slots (dtype defaults to the config's compute dtype)."""
  dtype = dtype or config.dtype
  shape = (config.num_layers, batch, length, config.num_kv_heads, config.head_dim)
  return KVCache(
      k=jnp.zeros(shape, dtype),
      v=jnp.zeros(shape, dtype),
      key_mask=jnp.zeros((batch, length), bool),
      index=jnp.zeros((), jnp.int32),
  )
