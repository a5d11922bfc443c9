"""Multi-host plumbing: start-up, who writes, host-local shards to global arrays and back.

The loop keeps one rule that makes multi-host runs equal to single-host ones: every host holds the
same *global* NumPy view of each step's small host-side data (prompt indices, rewards, gate
decisions, packed rows), computed deterministically; device arrays are then assembled from each
host's local block of it with `jax.make_array_from_process_local_data`, so the program that runs is
the single-host program on a bigger mesh. Expensive host work (reward scoring) is split by host and
gathered back (`host_block` + `allgather`).

Only process 0 writes logs, plots and Hugging Face exports (`is_main_process`); orbax checkpoints
are written collectively by every process.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np


@dataclasses.dataclass(frozen=True, kw_only=True)
class DistributedConfig:
  """How to join a multi-process run (from the launcher's flags; all None = single process).

  Attributes:
    coordinator_address: "host:port" of process 0's coordinator service.
    num_processes: total number of processes.
    process_id: this process's index in [0, num_processes).
    local_device_ids: devices of this host the process uses (None = all).
    auto: call `jax.distributed.initialize()` with no arguments, letting JAX detect the cluster
      (TPU pods, SLURM, Open MPI); chosen automatically when a TPU pod's environment is present.
  """
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  local_device_ids: tuple[int, ...] | None = None
  auto: bool = False

  def __post_init__(self):
    explicit = (self.coordinator_address, self.num_processes, self.process_id)
    if any(v is not None for v in explicit) and any(v is None for v in explicit):
      raise ValueError(
          "distributed: coordinator_address, num_processes and process_id must be given together; "
          f"got coordinator_address={self.coordinator_address!r}, "
          f"num_processes={self.num_processes!r}, process_id={self.process_id!r}")
    if self.num_processes is not None and not 0 <= self.process_id < self.num_processes:
      raise ValueError(f"distributed.process_id={self.process_id} is not in [0, {self.num_processes})")

  @property
  def explicit(self) -> bool:
    return self.coordinator_address is not None


def _on_multihost_tpu() -> bool:
  # A TPU pod slice lists every worker here; a single-host TPU VM lists one (or nothing).
  return len([h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1


def initialize(config: DistributedConfig) -> None:
  """Joins the multi-process run described by `config`; a no-op for a single process.

  Must run before anything touches a JAX device.
  """
  if config.explicit:
    jax.distributed.initialize(
        coordinator_address=config.coordinator_address, num_processes=config.num_processes,
        process_id=config.process_id,
        local_device_ids=list(config.local_device_ids) if config.local_device_ids else None)
  elif config.auto or _on_multihost_tpu():
    jax.distributed.initialize()
  else:
    return
  logging.info("joined distributed run: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())


def is_main_process() -> bool:
  """True on the one process that writes logs, plots and exports."""
  return jax.process_index() == 0


def host_block(n: int, *, process_index: int | None = None, process_count: int | None = None) -> slice:
  """The contiguous block of `n` items this host handles (host-sharded host work).

  Blocks differ in size by at most one when `n` does not divide; their union is `range(n)`.
  """
  p = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  base, extra = divmod(n, count)
  start = p * base + min(p, extra)
  return slice(start, start + base + (1 if p < extra else 0))


def _local_batch_block(global_shape: tuple[int, ...], sharding: jax.sharding.Sharding) -> tuple[slice, ...]:
  """The index box of the global array covered by this process's devices.

  `make_array_from_process_local_data` expects exactly that box, as one dense array. The devices
  of a process must therefore cover a box (true for meshes built with `jax.make_mesh`, which put
  each host's devices together along the leading axes).
  """
  boxes = sharding.addressable_devices_indices_map(global_shape).values()
  box = []
  for dim, size in enumerate(global_shape):
    starts = [(b[dim].start or 0) for b in boxes]
    stops = [(size if b[dim].stop is None else b[dim].stop) for b in boxes]
    box.append(slice(min(starts), max(stops)))
  return tuple(box)


def global_array(global_value: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
  """A global jax.Array from a NumPy value every host holds in full.

  Each host contributes only its own block (`make_array_from_process_local_data`), so no host
  sends data it does not own to a device.
  """
  global_value = np.asarray(global_value)
  local = global_value[_local_batch_block(global_value.shape, sharding)]
  return jax.make_array_from_process_local_data(sharding, local, global_value.shape)


def global_tree(tree: Any, shardings: Any) -> Any:
  """`global_array` over a pytree (shardings: one per leaf, or a single sharding for all)."""
  if isinstance(shardings, jax.sharding.Sharding):
    return jax.tree.map(lambda x: global_array(x, shardings), tree)
  return jax.tree.map(global_array, tree, shardings)


def allgather(x: Any) -> Any:
  """Host-local NumPy blocks (concatenated on axis 0 in process order) or global jax.Arrays →
  full NumPy values on every host."""
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, x)
  return jax.tree.map(np.asarray, multihost_utils.process_allgather(x, tiled=True))


def allgather_blocks(local: np.ndarray) -> np.ndarray:
  """Concatenates each host's `local` block (blocks may differ by one row, as `host_block` makes)."""
  if jax.process_count() == 1:
    return np.asarray(local)
  local = np.asarray(local)
  sizes = multihost_utils.process_allgather(np.asarray([local.shape[0]]), tiled=True)
  width = int(np.max(sizes))
  padded = np.zeros((width,) + local.shape[1:], local.dtype)
  padded[:local.shape[0]] = local
  gathered = np.asarray(multihost_utils.process_allgather(padded[None], tiled=True))
  return np.concatenate([g[:int(s)] for g, s in zip(gathered, sizes)], axis=0)


def assert_same_on_all_hosts(value: Any, *, name: str) -> None:
  """Fails loudly if hosts diverged on a value that must agree (e.g. the step's prompt indices)."""
  if jax.process_count() > 1:
    multihost_utils.assert_equal(value, fail_message=f"hosts disagree on {name}")


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier `name`."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
