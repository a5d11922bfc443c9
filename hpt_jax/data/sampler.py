"""A resumable, deterministic, host-sharded batch sampler (HPT: shuffle=True, drop_last=True).

Epoch `e` visits the examples in the order `permutation(seed, e)`; it is cut into global batches of
`batch_size * process_count` indices (a short remainder is dropped), and host `p` takes slice
`[p * batch_size, (p + 1) * batch_size)` of each global batch. So all hosts share one small state --
`(seed, epoch, step)` plus the sizes it was built for -- which goes into the checkpoint, and every
host's shard is a disjoint part of the same global batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping

import numpy as np


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplerState:
  """Everything needed to continue exactly where a sampler stopped.

  Attributes:
    seed: shuffling seed.
    epoch: current epoch (0-based).
    step: global batches already taken in this epoch.
    num_examples: dataset size the state was made for (checked on restore).
    global_batch_size: batch_size * process_count the state was made for (checked on restore).
  """
  seed: int
  epoch: int = 0
  step: int = 0
  num_examples: int
  global_batch_size: int


def epoch_order(*, num_examples: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
  """[num_examples] int64 visiting order of one epoch; a pure function of (seed, epoch)."""
  if not shuffle:
    return np.arange(num_examples)
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def batch_indices(state: SamplerState, *, process_index: int, process_count: int,
                  shuffle: bool = True) -> np.ndarray:
  """This host's indices for the batch at `state` (before advancing): [global_batch_size / count]."""
  per_host = state.global_batch_size // process_count
  order = epoch_order(num_examples=state.num_examples, seed=state.seed, epoch=state.epoch, shuffle=shuffle)
  start = state.step * state.global_batch_size + process_index * per_host
  return order[start:start + per_host]


def advance(state: SamplerState) -> SamplerState:
  """The state after one global batch (rolls over to the next epoch when the epoch is used up)."""
  steps_per_epoch = state.num_examples // state.global_batch_size
  if state.step + 1 >= steps_per_epoch:
    return dataclasses.replace(state, epoch=state.epoch + 1, step=0)
  return dataclasses.replace(state, step=state.step + 1)


class EpochSampler:
  """Iterator of this host's index batches; `state_dict()` / `EpochSampler.from_state(...)` to resume.

  Args:
    num_examples: dataset size N.
    batch_size: examples per batch on THIS host.
    seed: shuffling seed (HPT's sampler uses 47).
    process_index, process_count: this host and the number of hosts (jax.process_index/count()).
    shuffle: False visits 0..N-1 in order every epoch.
  """

  def __init__(self, *, num_examples: int, batch_size: int, seed: int, process_index: int = 0,
               process_count: int = 1, shuffle: bool = True):
    if batch_size < 1 or process_count < 1:
      raise ValueError(f"batch_size ({batch_size}) and process_count ({process_count}) must be >= 1")
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    global_batch = batch_size * process_count
    if num_examples < global_batch:
      raise ValueError(f"num_examples ({num_examples}) is smaller than one global batch "
                       f"({batch_size} x {process_count} hosts); with drop_last nothing would be sampled")
    self.state = SamplerState(seed=seed, num_examples=num_examples, global_batch_size=global_batch)
    self.batch_size = batch_size
    self.process_index = process_index
    self.process_count = process_count
    self.shuffle = shuffle

  @property
  def steps_per_epoch(self) -> int:
    return self.state.num_examples // self.state.global_batch_size

  def __iter__(self) -> Iterator[np.ndarray]:
    return self

  def __next__(self) -> np.ndarray:
    indices = batch_indices(self.state, process_index=self.process_index,
                            process_count=self.process_count, shuffle=self.shuffle)
    self.state = advance(self.state)
    return indices

  def state_dict(self) -> dict[str, int]:
    """Plain ints, for a checkpoint (identical on every host)."""
    return dataclasses.asdict(self.state)

  @classmethod
  def from_state(cls, state: Mapping[str, int], *, batch_size: int, process_index: int = 0,
                 process_count: int = 1, shuffle: bool = True, num_examples: int | None = None) -> EpochSampler:
    """Rebuilds a sampler at a saved position; the sizes must match the ones the state was made for.

    Args:
      num_examples: the current dataset size, checked against the saved one when given.
    """
    missing = {f.name for f in dataclasses.fields(SamplerState)} - set(state)
    if missing:
      raise KeyError(f"sampler state lacks {sorted(missing)}")
    saved = SamplerState(**{f.name: int(state[f.name]) for f in dataclasses.fields(SamplerState)})
    if num_examples is not None and num_examples != saved.num_examples:
      raise ValueError(f"sampler state was saved for {saved.num_examples} examples, the dataset now has "
                       f"{num_examples}")
    sampler = cls(num_examples=saved.num_examples, batch_size=batch_size, seed=saved.seed,
                  process_index=process_index, process_count=process_count, shuffle=shuffle)
    if sampler.state.global_batch_size != saved.global_batch_size:
      raise ValueError(f"sampler state was saved for global batch {saved.global_batch_size}, now "
                       f"{sampler.state.global_batch_size} ({batch_size} x {process_count} hosts)")
    sampler.state = saved
    return sampler
