"""`python -m hpt_jax.train`: post-train a model with HPT or a baseline.

  python -m hpt_jax.train                                  # builtin_tiny into ./runs/builtin_tiny
  python -m hpt_jax.train --config experiments/configs/builtin_tiny.py --workdir /tmp/run \
      --algorithm grpo --set optim.learning_rate=1e-6 --set phases.0.steps=100
  # multi-host (run once per process; on a TPU pod the flags are detected automatically):
  python -m hpt_jax.train --coordinator_address host0:1234 --num_processes 2 --process_id 0 ...

Restarting with the same flags and workdir resumes from the last checkpoint. This file only reads
flags and hands a `TrainConfig` to `hpt_jax.training.loop.train`; library code never reads flags.
"""

from __future__ import annotations

import logging as std_logging
import pathlib
import sys

from absl import app
from absl import flags
from absl import logging

_REPO = pathlib.Path(__file__).resolve().parents[1]
_CONFIG_DIR = _REPO / "experiments" / "configs"

_CONFIG = flags.DEFINE_string(
    "config", "builtin_tiny",
    f"A Python config file exposing get_config(), or the name of one in {_CONFIG_DIR}.")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Output directory (checkpoints, metrics, logs). Default: ./runs/<config name>.")
_SET = flags.DEFINE_multi_string(
    "set", [], "Override one config field, e.g. --set optim.learning_rate=1e-6 (repeatable).")
_ALGORITHM = flags.DEFINE_string(
    "algorithm", None, "Run every phase with this baseline from the UPGE table (e.g. grpo, luffy).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")
_DISTRIBUTED_AUTO = flags.DEFINE_bool(
    "distributed_auto", False, "Call jax.distributed.initialize() with cluster auto-detection.")


def resolve_config_path(name: str) -> pathlib.Path:
  """A path as given if it exists, else `experiments/configs/<name>.py`."""
  path = pathlib.Path(name)
  if path.is_file():
    return path
  candidate = _CONFIG_DIR / (name if name.endswith(".py") else f"{name}.py")
  return candidate if candidate.is_file() else path


class _QuietLibraries(std_logging.Filter):
  """Keeps INFO lines of orbax / jax internals out of the run's log (warnings still pass)."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    noisy = ("/orbax/" in record.pathname or "/jax/" in record.pathname)
    return record.levelno >= std_logging.WARNING or not noisy


def _log_to_file(workdir: pathlib.Path) -> None:
  workdir.mkdir(parents=True, exist_ok=True)
  handler = std_logging.FileHandler(workdir / "train.log")
  handler.setFormatter(std_logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
  handler.addFilter(_QuietLibraries())
  logging.get_absl_logger().addHandler(handler)
  logging.get_absl_handler().addFilter(_QuietLibraries())


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Imported after flag parsing so `--help` is instant and no JAX backend starts before
  # `jax.distributed.initialize`.
  from hpt_jax.training import distributed
  from hpt_jax.training import config as config_lib
  from hpt_jax.training.overrides import ConfigError, load_config_file

  dist = distributed.DistributedConfig(
      coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
      process_id=_PROCESS_ID.value, auto=_DISTRIBUTED_AUTO.value)
  config_path = resolve_config_path(_CONFIG.value)
  try:
    config = config_lib.build_config(load_config_file(config_path), algorithm=_ALGORITHM.value,
                                     overrides=tuple(_SET.value))
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  workdir = pathlib.Path(_WORKDIR.value or pathlib.Path("runs") / config_path.stem).absolute()

  distributed.initialize(dist)
  import jax
  try:
    config_lib.validate(config, num_devices=jax.device_count())
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if distributed.is_main_process():
    _log_to_file(workdir)
  from hpt_jax.training import loop
  summary = loop.train(config, workdir=workdir)
  if distributed.is_main_process():
    print(f"\nrun finished: {summary.steps} steps in {workdir}")
    for name, path in summary.outputs.items():
      print(f"  {name:<14} {path}")
    _print_report(workdir)


def _print_report(workdir: pathlib.Path) -> None:
  """The start-vs-final held-out accuracy per level and the training-curve plots (hpt_jax.reporting)."""
  from hpt_jax import reporting
  try:
    report = reporting.report_run(workdir, title=workdir.name)
  except ValueError as e:  # e.g. validation switched off: nothing to compare
    print(f"\n(no accuracy table: {e})")
    return
  print(f"\n{report.table}\n")
  print(f"  {'summary':<22} {report.summary}")
  for name, path in report.plots.items():
    print(f"  {'plot ' + name:<22} {path}")


if __name__ == "__main__":
  app.run(main)
