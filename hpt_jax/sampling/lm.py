"""The `DecodeModel` over the Flax `CausalLM`: merges the trainer's parameter state into the graph
inside the jitted loop and returns last-position logits only.

Only the last position's logits are computed: for a real vocabulary (V ~ 150k) the full [B, P, V]
prefill logits would dominate memory, and under left padding the last prompt slot is always a real
token, so it is the only one the sampler needs.
"""

import dataclasses
from typing import Any

import flax.struct
import jax
from flax import nnx

from hpt_jax.models import CausalLM, KVCache, ModelConfig, init_cache
from hpt_jax.models.packed_prefill import packed_prefill
from hpt_jax.models.transformer import CachedLayer
from hpt_jax.models import sharding as model_sharding
from hpt_jax.typing import Array


@flax.struct.dataclass
class LoopParams:
  """What `CausalLMDecoder.loop_params` hands the decode loop: the parameter state plus the layers'
  weights laid out for cached calls (`CausalLM.cached_layers`), made once before the loop instead of
  once per generated token."""

  params: nnx.State
  layers: tuple[CachedLayer, ...]


def _pin_layout(cache: KVCache) -> KVCache:
  """Under a mesh, the cache's layout from the model's rules table (else as it is)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return cache
  specs = model_sharding.cache_shardings(cache, mesh)
  return jax.tree.map(lambda x, s: jax.lax.with_sharding_constraint(x, s.spec), cache, specs)


@dataclasses.dataclass(frozen=True)
class CausalLMDecoder:
  """Hashable (graphdef, config) pair: a static argument of the jitted loop; params stay arguments.

  Attributes:
    graphdef: `nnx.split(model)[0]` of a `CausalLM`.
    config: the model's config (cache shape and dtype).
    cache_dtype: KV cache dtype; None = the config's compute dtype.
    hoist_layers: make the layers' cached-call weights (`CausalLM.cached_layers`: slices of the
      stacked [L, ...] weights, 2-D, in the compute dtype) once per `generate` call (`loop_params`)
      rather than in every decode step, where XLA:CPU copied all layer weights once per token. The
      price is one extra copy of the layer weights (compute dtype, same sharding) while sampling.
    decode_phases: split the decode loop into up to this many phases whose caches hold only the
      slots the phase can fill (`loop.phase_ends`), so decode attention does not read empty slots;
      each phase is one more compiled loop body. 1 = one loop on the full P + T cache.
    packs_prefill: accept `prefill_tokens` from the sampler and run the prefill's per-token work on
      the real prompt tokens only (`models.packed_prefill`), not on the padded slots.
  """

  graphdef: nnx.GraphDef
  config: ModelConfig
  cache_dtype: Any = None
  hoist_layers: bool = True
  decode_phases: int = 4
  packs_prefill: bool = True

  @classmethod
  def from_model(cls, model: CausalLM, *, cache_dtype: Any = None, hoist_layers: bool = True,
                 decode_phases: int = 4, packs_prefill: bool = True
                 ) -> tuple["CausalLMDecoder", nnx.State]:
    """Splits a model into the decoder and its parameter state (the arrays are shared, not copied)."""
    graphdef, params = nnx.split(model)
    return cls(graphdef, model.config, cache_dtype, hoist_layers, decode_phases, packs_prefill), params

  def loop_params(self, params: nnx.State) -> nnx.State | LoopParams:
    """Called by the loop once, before the prefill: the layers' weights laid out for cached calls."""
    if not self.hoist_layers:
      return params
    return LoopParams(params=params, layers=nnx.merge(self.graphdef, params).cached_layers())

  def init_cache(self, *, batch: int, length: int) -> KVCache:
    # Under a mesh the layout is pinned (batch over data/fsdp, KV heads over tensor), so the
    # while-loop carry keeps it instead of whatever propagation picks.
    return _pin_layout(init_cache(self.config, batch=batch, length=length, dtype=self.cache_dtype))

  def repeat_cache(self, cache: KVCache, n: int) -> KVCache:
    """Every row of the cache repeated n times (adjacent): one prefill serves n samples."""
    return _pin_layout(cache.repeat_rows(n))  # the cache knows its own layout

  def grow_cache(self, cache: KVCache, length: int) -> KVCache:
    """The cache with `length` slots (the new ones empty), between decode phases."""
    return _pin_layout(cache.grow(length))

  def __call__(self, params: nnx.State | LoopParams, tokens: Array, *, positions: Array,
               attention_mask: Array, cache: KVCache, prefill_tokens: int | None = None
               ) -> tuple[Array, KVCache]:
    """tokens/positions/attention_mask: [B, T'] -> ([B, V] float32 last-position logits, cache).

    `params` is the parameter state or what `loop_params` made of it. `prefill_tokens` (a prefill of
    left-padded prompts only): R >= the real token count; the per-token work runs on R packed rows."""
    layers = None
    if isinstance(params, LoopParams):
      params, layers = params.params, params.layers
    model = nnx.merge(self.graphdef, params)
    if prefill_tokens is not None:
      hidden, cache = packed_prefill(
          model, tokens, positions=positions, attention_mask=attention_mask, cache=cache,
          cached_layers=layers if layers is not None else model.cached_layers(),
          packed_tokens=prefill_tokens)
      return model.logits(hidden)[:, 0], cache
    hidden, cache = model(tokens, positions=positions, attention_mask=attention_mask, cache=cache,
                          last_only=True, cached_layers=layers)
    return model.logits(hidden)[:, 0], cache
