"""The device mesh of the train step and the shardings of its inputs and outputs.

Mesh axes are `data × fsdp × tensor` (`hpt_jax.models.sharding`). Parameters follow the model's
logical-axis rules table; the optimizer state mirrors the parameters (Adam's moments get the
parameter's sharding, counters are replicated); batch rows are split over the rules' `act_batch`
axes (data and fsdp), the micro-batch axis and the sequence axis stay whole.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from hpt_jax.models import sharding


@dataclasses.dataclass(frozen=True, kw_only=True)
class MeshConfig:
  """Sizes of the three mesh axes; their product must equal the number of devices used."""

  data: int = 1
  fsdp: int = 1
  tensor: int = 1

  def __post_init__(self):
    for name in ("data", "fsdp", "tensor"):
      if getattr(self, name) < 1:
        raise ValueError(f"MeshConfig.{name} must be >= 1, got {getattr(self, name)}")

  @property
  def size(self) -> int:
    return self.data * self.fsdp * self.tensor

  @property
  def batch_shards(self) -> int:
    """How many ways batch rows are split (rows per micro-batch must be a multiple)."""
    axes = sharding.LOGICAL_RULES["act_batch"]
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    return math.prod(getattr(self, a) for a in axes)

  def build(self, devices: Sequence[jax.Device] | None = None) -> Mesh:
    devices = list(jax.devices() if devices is None else devices)[:self.size]
    return sharding.make_mesh(data=self.data, fsdp=self.fsdp, tensor=self.tensor, devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """[M, Bm, ...]: rows (axis 1) over the act_batch axes; a 0-d array is replicated."""
  if ndim == 0:
    return replicated(mesh)
  if ndim == 1:
    raise ValueError("batch arrays are [M, Bm, ...] or scalars; got a 1-d array")
  return NamedSharding(mesh, PartitionSpec(None, sharding.LOGICAL_RULES["act_batch"], *([None] * (ndim - 2))))


def batch_shardings(batch: Any, mesh: Mesh) -> Any:
  """Shardings for every array of a `MicroBatches` (same pytree)."""
  return jax.tree.map(lambda x: batch_sharding(mesh, x.ndim), batch)


def param_shardings(abstract_state: nnx.State, mesh: Mesh) -> dict:
  """Pure-dict NamedShardings of the parameters, from their logical axes and the rules table."""
  return nnx.to_pure_dict(sharding.param_shardings(abstract_state, mesh))


def opt_state_shardings(optimizer: optax.GradientTransformation, abstract_params: Any, params_sharding: Any,
                        mesh: Mesh) -> Any:
  """Optimizer-state shardings: parameter-shaped leaves as their parameter, the rest replicated."""
  abstract_state = jax.eval_shape(optimizer.init, abstract_params)
  shaped_as_params = optax.tree_map_params(optimizer, lambda _, s: s, abstract_state, params_sharding,
                                           transform_non_params=lambda _: replicated(mesh))
  return shaped_as_params
