"""Orbax checkpoints of a training run: async saves, keep-last-k plus keep-best, restore-latest.

A checkpoint holds two items:
  * `state`: the array pytree of the run (params, optimizer state, gate state, step counter), saved
    collectively by every process with `StandardSave` (each host writes its own shards);
  * `host`: a small JSON dict (data-sampler position, PRNG key data, best validation score so far,
    anything else a restart needs that is not an array), written once by the primary process.

Crash safety comes from orbax itself: a step is written into a temporary directory
(`<step>.orbax-checkpoint-tmp-*`) and renamed to `<step>` only after every file is flushed, so a
process killed mid-write leaves the previous step as the latest one; `cleanup_tmp_directories`
removes the debris on the next start. `tests/test_checkpoint.py` verifies this by SIGKILL.

Retention: the last `keep_last` steps are kept, plus the `keep_best` steps with the best validation
score (steps saved without a validation score are never "best"). Orbax's preservation policies do
the bookkeeping, so a resumed run deletes exactly what an uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import enum
import pathlib
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from hpt_jax.training.overrides import ConfigError


class BestMode(enum.Enum):
  """Whether a larger or a smaller validation score is better."""
  MAX = "max"
  MIN = "min"


@dataclasses.dataclass(frozen=True, kw_only=True)
class CheckpointConfig:
  """Checkpoint cadence and retention.

  Attributes:
    every_steps: save after every this many training steps (and always after the last step).
    keep_last: how many most recent checkpoints to keep (>= 1, needed for resume).
    keep_best: how many best-by-validation checkpoints to keep in addition (0 = none).
    best_metric: the validation metric name that ranks checkpoints.
    best_mode: whether larger (max) or smaller (min) `best_metric` is better.
    async_save: write in a background thread while training continues.
    export_hf: export the best and the final model as Hugging Face directories (process 0 only).
  """
  every_steps: int = 10
  keep_last: int = 2
  keep_best: int = 1
  best_metric: str = "val/accuracy"
  best_mode: BestMode = BestMode.MAX
  async_save: bool = True
  export_hf: bool = True

  def __post_init__(self):
    if self.every_steps < 1:
      raise ConfigError(f"checkpoint.every_steps must be >= 1, got {self.every_steps}")
    if self.keep_last < 1:
      raise ConfigError(f"checkpoint.keep_last must be >= 1 (resume needs one), got {self.keep_last}")
    if self.keep_best < 0:
      raise ConfigError(f"checkpoint.keep_best must be >= 0, got {self.keep_best}")


def _abstract(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings when known) describing `tree`, for a sharded restore."""
  def leaf(x):
    if isinstance(x, (jax.ShapeDtypeStruct, np.ndarray, np.generic)):
      return x  # Host NumPy leaves (e.g. the gate's state) are restored as NumPy.
    return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=getattr(x, "sharding", None))
  return jax.tree.map(leaf, tree)


class Checkpointer:
  """Saves and restores (state pytree, host JSON dict) pairs in `directory/<step>/`.

  Every process must call `save` / `restore` with the same step (orbax writes collectively).
  """

  def __init__(self, directory: str | pathlib.Path, *, config: CheckpointConfig):
    self.config = config
    self.directory = pathlib.Path(directory).absolute()
    policies = [checkpoint_managers.LatestN(n=config.keep_last)]
    if config.keep_best:
      sign = 1.0 if config.best_mode is BestMode.MAX else -1.0
      # BestN sorts ascending and keeps the tail, so "min" is handled by negating the score.
      policies.append(checkpoint_managers.BestN(
          get_metric_fn=lambda m: sign * float(m["score"]), n=config.keep_best,
          keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=config.async_save,
        cleanup_tmp_directories=True,
        create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "host"))

  def latest_step(self) -> int | None:
    """The newest fully written step, or None for a fresh directory."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, *, state: Any, host: dict, score: float | None = None) -> None:
    """Starts saving `state` and `host` as `step` (returns before the write ends when async).

    Args:
      step: the number of training steps completed.
      state: the array pytree (params, optimizer and gate state, ...); must not be donated or
        mutated until the save finishes (jax arrays are immutable, so passing them is safe).
      host: a JSON-able dict (sampler position, PRNG key data as ints, ...).
      score: the validation score of this step's model, if it was validated; ranks "best".
    """
    metrics = None if score is None or not np.isfinite(score) else {"score": float(score)}
    self._manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), host=ocp.args.JsonSave(host)),
        metrics=metrics,
        force=True)

  def restore(self, step: int | None = None, *, like: Any = None) -> tuple[Any, dict]:
    """Restores `(state, host)` of `step` (default: the latest).

    Args:
      step: which step; None for the latest.
      like: a pytree of arrays or ShapeDtypeStructs (with target shardings) shaped like the state;
        None restores the saved tree as it is (nested dicts/lists, for inspection).

    Raises:
      FileNotFoundError: when there is no checkpoint to restore.
    """
    if step is None:
      step = self.latest_step()
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(None if like is None else _abstract(like)),
        host=ocp.args.JsonRestore()))
    return restored.state, dict(restored.host)

  def wait(self) -> None:
    """Blocks until any in-flight async save is on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


@dataclasses.dataclass
class BestTracker:
  """Remembers the best validation score so far, to export the best model when it improves.

  Its two fields go into the checkpoint's host dict (`as_dict` / `from_dict`), so a resumed run
  exports exactly when the uninterrupted one would.
  """
  mode: BestMode
  best_score: float | None = None
  best_step: int | None = None

  def improves(self, score: float) -> bool:
    if not np.isfinite(score):
      return False
    if self.best_score is None:
      return True
    return score > self.best_score if self.mode is BestMode.MAX else score < self.best_score

  def update(self, step: int, score: float) -> bool:
    """Records `score` at `step`; returns whether it is a new best."""
    if not self.improves(score):
      return False
    self.best_score, self.best_step = float(score), int(step)
    return True

  def as_dict(self) -> dict:
    return {"best_score": self.best_score, "best_step": self.best_step}

  @classmethod
  def from_dict(cls, mode: BestMode, d: dict) -> "BestTracker":
    return cls(mode=mode, best_score=d.get("best_score"), best_step=d.get("best_step"))


ExportFn = Callable[[Any, pathlib.Path], None]
"""`export(params, directory)`: writes a Hugging Face model directory (the model package's exporter)."""
