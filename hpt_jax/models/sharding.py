"""Logical axis names, the one table mapping them to mesh axes, and mesh / sharding helpers.

Every parameter carries a `logical_axes` tuple in its NNX metadata (e.g. q_proj kernel
`("layers", "embed", "heads", "head_dim")`), and key activations are constrained by logical names
inside the model. `LOGICAL_RULES` is the single place that says which mesh axis (`data`, `fsdp`,
`tensor`) each logical name is split over:
  * FSDP (ZeRO-3 style) shards the model width `embed` of every weight; XLA all-gathers a layer's
    weights just before use, so parameter and optimizer memory fall by the fsdp size.
  * Tensor parallelism (Megatron style) splits heads, the MLP width and the vocabulary.
  * Activations are split over the batch by both `data` and `fsdp` (FSDP is data parallel for
    activations).
A dimension that a mesh axis does not divide is left replicated on that axis (e.g. 2 KV heads on a
tensor axis of 4), so every preset works on every mesh.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from hpt_jax.typing import Array

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axis (or tuple of axes, or None = replicated).
LOGICAL_RULES: Mapping[str, str | tuple[str, ...] | None] = {
    # parameters
    "layers": None,
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "norm": None,
    # activations
    "act_batch": ("data", "fsdp"),
    "act_length": None,
    "act_embed": None,
    "act_heads": "tensor",
    "act_kv_heads": "tensor",
    "act_mlp": "tensor",
    "act_vocab": "tensor",
    # KV cache
    "cache_layers": None,
    "cache_batch": ("data", "fsdp"),
    "cache_length": None,
}


def make_mesh(*, data: int = 1, fsdp: int = 1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A data x fsdp x tensor mesh over `devices` (default: all devices); the product must match."""
  devices = list(jax.devices() if devices is None else devices)
  if data * fsdp * tensor != len(devices):
    raise ValueError(f"mesh data={data} x fsdp={fsdp} x tensor={tensor} = {data * fsdp * tensor} "
                     f"does not match the {len(devices)} devices")
  grid = np.asarray(devices, dtype=object).reshape(data, fsdp, tensor)
  return Mesh(grid, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)


def logical_to_spec(logical_axes: Sequence[str | None], shape: Sequence[int],
                    mesh: Mesh | Mapping[str, int], *,
                    rules: Mapping[str, Any] = LOGICAL_RULES) -> PartitionSpec:
  """Maps logical names to a PartitionSpec, dropping mesh axes that do not divide the dimension.

  Args:
    logical_axes: one name (or None) per array dimension.
    shape: the array shape.
    mesh: a Mesh, an AbstractMesh, or a mapping axis name -> size (only sizes are read).
  """
  if len(logical_axes) != len(shape):
    raise ValueError(f"logical axes {tuple(logical_axes)} do not match shape {tuple(shape)}")
  sizes = dict(mesh) if isinstance(mesh, Mapping) else dict(mesh.shape)
  used: set[str] = set()
  spec = []
  for name, dim in zip(logical_axes, shape):
    if name is not None and name not in rules:
      raise KeyError(f"logical axis {name!r} has no entry in the sharding rules")
    target = rules.get(name) if name is not None else None
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    kept = []
    for axis in axes:
      # A mesh axis may appear once per spec; keep it only while the product still divides `dim`.
      size = sizes.get(axis, 1)
      if axis in used or size == 1 or dim % (size * int(np.prod([sizes[a] for a in kept]))):
        continue
      kept.append(axis)
      used.add(axis)
    spec.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
  return PartitionSpec(*spec)


def _is_variable(x: Any) -> bool:
  return isinstance(x, nnx.Variable)


def logical_axes_of(variable: nnx.Variable) -> tuple[str | None, ...]:
  """The `logical_axes` metadata of a parameter (error naming the shape if it has none)."""
  axes = variable.get_metadata().get("logical_axes")
  if axes is None:
    raise ValueError(f"parameter of shape {variable.shape} has no logical_axes metadata")
  return tuple(axes)


def param_shardings(state: nnx.State, mesh: Mesh, *,
                    rules: Mapping[str, Any] = LOGICAL_RULES) -> nnx.State:
  """NamedShardings for a (possibly abstract) params state, same tree structure as `state`.

  Use as `jax.device_put(state, param_shardings(state, mesh))` or as jit in/out shardings.
  """
  def one(v: nnx.Variable):
    spec = logical_to_spec(logical_axes_of(v), v.shape, mesh, rules=rules)
    return v.replace(NamedSharding(mesh, spec))
  return jax.tree.map(one, state, is_leaf=_is_variable)


def cache_shardings(cache: Any, mesh: Mesh, *, rules: Mapping[str, Any] = LOGICAL_RULES) -> Any:
  """NamedShardings for a `KVCache` (same pytree structure: per layer keys [B, K, H, S], values
  [B, K, S, H])."""
  k_axes = ("cache_batch", "kv_heads", "head_dim", "cache_length")
  v_axes = ("cache_batch", "kv_heads", "cache_length", "head_dim")
  def spec(axes, x):
    return NamedSharding(mesh, logical_to_spec(axes, x.shape, mesh, rules=rules))
  return type(cache)(
      k=tuple(spec(k_axes, x) for x in cache.k), v=tuple(spec(v_axes, x) for x in cache.v),
      key_mask=spec(("cache_batch", "cache_length"), cache.key_mask),
      index=NamedSharding(mesh, PartitionSpec()))


def constrain(x: Array, logical_axes: Sequence[str | None], *,
              rules: Mapping[str, Any] = LOGICAL_RULES) -> Array:
  """Sharding constraint by logical names under the ambient mesh (`jax.set_mesh`); no-op without one."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  spec = logical_to_spec(logical_axes, x.shape, mesh, rules=rules)
  return jax.lax.with_sharding_constraint(x, spec)
