"""Shapes, parameter counts and per-device memory estimates, without allocating anything.

`abstract_params` runs the model constructor under `nnx.eval_shape`, so the 7B/8B presets cost no
memory; `param_count` sums it. `estimate_memory` gives the per-device bytes of parameters, gradients,
AdamW moments and activations for a mesh and micro-batch, from the same sharding rules the model
uses (a dimension a mesh axis does not divide stays replicated, exactly as `sharding.logical_to_spec`
decides). The activation figure is a documented first-order model (see `_activation_bytes`), meant
for choosing micro-batch / remat in the paper-recipe configs, not a profiler substitute.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hpt_jax.models import sharding
from hpt_jax.models.config import ModelConfig, RematPolicy
from hpt_jax.models.factory import abstract_model

GIB = 2**30


def abstract_params(config: ModelConfig) -> nnx.State:
  """The params state as ShapeDtypeStructs (with logical_axes metadata); allocates nothing."""
  return nnx.state(abstract_model(config), nnx.Param)


def param_count(config: ModelConfig) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_params(config)))


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
  """Bytes per device."""
  params: int
  grads: int
  optimizer: int       # AdamW first + second moments
  activations: int     # saved for backward + the live working set of one layer + logits
  kv_cache: int = 0

  @property
  def total(self) -> int:
    return self.params + self.grads + self.optimizer + self.activations + self.kv_cache

  def summary(self) -> str:
    parts = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    body = ", ".join(f"{k} {v / GIB:.2f}" for k, v in parts.items())
    return f"{body}; total {self.total / GIB:.2f} GiB/device"


def _sharded_bytes(state: nnx.State, mesh_shape: Mapping[str, int], itemsize: int) -> int:
  total = 0
  for _, variable in nnx.to_flat_state(state):
    spec = sharding.logical_to_spec(sharding.logical_axes_of(variable), variable.shape, mesh_shape)
    shards = 1
    for entry in spec:
      for axis in ((entry,) if isinstance(entry, str) else entry or ()):
        shards *= mesh_shape[axis]
    total += int(np.prod(variable.shape)) * itemsize // shards
  return total


def _activation_bytes(config: ModelConfig, *, rows: int, seq_len: int, tensor: int,
                      logits_chunk: int | None) -> int:
  """First-order activation model for one device holding `rows` sequences of `seq_len` tokens.

  Per token, one layer's tensors (in the compute dtype unless noted):
    width-D tensors: layer input, two norm outputs, attention output, residual: 5 D
    q, k, v: (N + 2K) H;  MLP gate, up, silu(gate), product: 4 F
  plus float32 attention scores and probabilities, 2 N S per query; with
  `config.attention_query_chunk` = C only one chunk's are alive ([rows, C, S]) and none are saved.
  Head/MLP/vocab dims are divided by `tensor` when it divides them (as the sharding rules do).
  RematPolicy.NONE keeps all of it for every layer; FULL keeps only the layer input per layer plus
  one layer's working set; SAVE_DOTS keeps the matmul outputs (q, k, v, attention output, gate, up,
  and unchunked scores) per layer. The float32 logits [rows, seq_len or chunk, V] come on top.
  """
  d, f, n, k, h = (config.hidden_size, config.intermediate_size, config.num_heads,
                   config.num_kv_heads, config.head_dim)
  split = lambda dim: dim // tensor if dim % tensor == 0 else dim
  act = jnp.dtype(config.dtype).itemsize
  tokens = rows * seq_len
  query_rows = min(config.attention_query_chunk or seq_len, seq_len)
  scores_live = rows * query_rows * 2 * split(n) * seq_len * 4
  scores_saved = 0 if config.attention_query_chunk else scores_live
  dense = tokens * (5 * d + (split(n) + 2 * split(k)) * h + 4 * split(f)) * act
  dots = tokens * ((split(n) + 2 * split(k)) * h + d + 2 * split(f)) * act
  per_layer_input = tokens * d * act
  working_set = dense + scores_live
  saved = {
      RematPolicy.NONE: config.num_layers * (dense + scores_saved) + scores_live,
      RematPolicy.FULL: config.num_layers * per_layer_input + working_set,
      RematPolicy.SAVE_DOTS: (config.num_layers * (dots + scores_saved // 2 + per_layer_input)
                              + working_set),
  }[config.remat]
  logits = rows * (logits_chunk or seq_len) * split(config.vocab_size) * 4
  return saved + logits


def estimate_memory(config: ModelConfig, *, mesh_shape: Mapping[str, int], micro_batch: int,
                    seq_len: int, optimizer_dtype=jnp.float32, train: bool = True,
                    logits_chunk: int | None = None, kv_cache_length: int = 0) -> MemoryEstimate:
  """Per-device memory for a data x fsdp x tensor mesh.

  Args:
    config: the model (its dtype policy and remat policy are used).
    mesh_shape: {"data": d, "fsdp": f, "tensor": t} (missing axes = 1).
    micro_batch: sequences per micro-batch, over the whole mesh (split over data x fsdp).
    seq_len: tokens per sequence (prompt + response).
    optimizer_dtype: dtype of the two AdamW moments.
    train: False = inference only (no grads, optimizer or saved activations).
    logits_chunk: tokens per log-prob chunk if the loss computes logits in chunks.
    kv_cache_length: > 0 adds a KV cache of this length for `micro_batch` rows (sampling).
  """
  mesh_shape = {axis: int(mesh_shape.get(axis, 1)) for axis in sharding.MESH_AXES}
  state = abstract_params(config)
  param_bytes = _sharded_bytes(state, mesh_shape, jnp.dtype(config.param_dtype).itemsize)
  batch_shards = mesh_shape["data"] * mesh_shape["fsdp"]
  rows = -(-micro_batch // batch_shards)
  kv = 0
  if kv_cache_length:
    k = config.num_kv_heads
    kv_heads = k // mesh_shape["tensor"] if k % mesh_shape["tensor"] == 0 else k
    kv = (2 * config.num_layers * rows * kv_cache_length * kv_heads * config.head_dim
          * jnp.dtype(config.dtype).itemsize)
  if not train:
    inference = dataclasses.replace(config, remat=RematPolicy.FULL)
    act = _activation_bytes(inference, rows=rows, seq_len=seq_len, tensor=mesh_shape["tensor"],
                            logits_chunk=logits_chunk)
    act -= config.num_layers * rows * seq_len * config.hidden_size * jnp.dtype(config.dtype).itemsize
    return MemoryEstimate(params=param_bytes, grads=0, optimizer=0, activations=act, kv_cache=kv)
  return MemoryEstimate(
      params=param_bytes,
      grads=param_bytes,
      optimizer=2 * _sharded_bytes(state, mesh_shape, jnp.dtype(optimizer_dtype).itemsize),
      activations=_activation_bytes(config, rows=rows, seq_len=seq_len,
                                    tensor=mesh_shape["tensor"], logits_chunk=logits_chunk),
      kv_cache=kv)
