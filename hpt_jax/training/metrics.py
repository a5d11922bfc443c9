"""Training metrics: their names, the host-side rollout statistics, and the JSONL / TensorBoard writers.

Names are flat strings `group/name` (TensorBoard groups on the prefix). The ones the paper plots:
  reward/mean, reward/accuracy        mean reward and fraction of rollouts judged correct
  gate/sft_fraction                   fraction of the step's questions sent to SFT
  gate/off_example_ratio              demonstration rows / all training rows (the paper's Fig. 6)
  response/length_mean, response/truncation_rate
  train/entropy, train/grad_norm, train/skipped_updates
  train/algo_clipped_frac, train/algo_dual_clipped_frac   clip fractions (the algorithm's; LUFFY/SRFT
                                      prefix on-policy ones with on_)
  perf/sampling_tokens_per_s, perf/training_tokens_per_s, reward/timeouts
The train step reports its own `train/*` values; this module computes the rollout-side ones from
plain NumPy arrays (they never enter a jitted function) and writes everything.

Only process 0 writes files (`is_writer`); other processes get a writer that does nothing, so the
loop needs no branches.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Mapping

import numpy as np


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoggingConfig:
  """Where and how often metrics are written.

  Attributes:
    jsonl: append one JSON object per step to `<workdir>/metrics.jsonl`.
    tensorboard: write TensorBoard event files to `<workdir>/tensorboard`.
    progress_bar: show a progress bar with ETA and live metrics (process 0 only).
    summary_every: log a one-line summary every this many steps.
  """
  jsonl: bool = True
  tensorboard: bool = True
  progress_bar: bool = True
  summary_every: int = 1


def rollout_metrics(*, rewards: np.ndarray, correct: np.ndarray, response_lengths: np.ndarray,
                    truncated: np.ndarray, to_sft: np.ndarray, num_rl_rows: int,
                    num_sft_rows: int, timeouts: int) -> dict[str, float]:
  """Statistics of one step's rollouts and of the gate's routing.

  Args:
    rewards: [Q, n] float rewards of the n rollouts of each of Q questions.
    correct: [Q, n] bool, rollout judged correct.
    response_lengths: [Q, n] int number of valid response tokens (up to and including EOS).
    truncated: [Q, n] bool, rollout stopped at the length limit without EOS.
    to_sft: [Q] bool, question routed to the SFT branch by the gate.
    num_rl_rows: training rows built from on-policy rollouts.
    num_sft_rows: training rows built from demonstrations.
    timeouts: rewards that hit the verifier's time limit (scored 0).

  Returns:
    A dict of floats keyed by the metric names in the module docstring.
  """
  rewards, correct = np.asarray(rewards, np.float64), np.asarray(correct, bool)
  lengths, truncated = np.asarray(response_lengths, np.float64), np.asarray(truncated, bool)
  to_sft = np.asarray(to_sft, bool)
  if rewards.ndim != 2 or rewards.shape != correct.shape or rewards.shape != lengths.shape \
      or rewards.shape != truncated.shape:
    raise ValueError(
        "rewards, correct, response_lengths, truncated must all be [Q, n]; got "
        f"{rewards.shape}, {correct.shape}, {lengths.shape}, {truncated.shape}")
  if to_sft.shape != rewards.shape[:1]:
    raise ValueError(f"to_sft must be [Q]={rewards.shape[:1]}, got {to_sft.shape}")
  rows = num_rl_rows + num_sft_rows
  return {
      "reward/mean": float(rewards.mean()),
      "reward/accuracy": float(correct.mean()),
      # pass@n of the step's questions: the share with at least one correct rollout.
      "reward/solved_fraction": float(correct.any(axis=1).mean()),
      "reward/timeouts": float(timeouts),
      "gate/sft_fraction": float(to_sft.mean()),
      "gate/off_example_ratio": float(num_sft_rows / rows) if rows else 0.0,
      "gate/rl_rows": float(num_rl_rows),
      "gate/sft_rows": float(num_sft_rows),
      "response/length_mean": float(lengths.mean()),
      "response/length_max": float(lengths.max()),
      "response/truncation_rate": float(truncated.mean()),
  }


def summary_line(step: int, metrics: Mapping[str, float], *, keys: tuple[str, ...] = (
    "reward/accuracy", "gate/off_example_ratio", "train/loss", "train/grad_norm",
    "train/entropy", "response/length_mean", "perf/step_seconds")) -> str:
  """One log line per step: `step 12 | accuracy 0.375 | off_example_ratio 0.12 | ...`."""
  parts = [f"step {step}"]
  for key in keys:
    if key in metrics:
      parts.append(f"{key.split('/')[-1]} {_fmt(metrics[key])}")
  return " | ".join(parts)


def _fmt(value: float) -> str:
  value = float(value)
  if not math.isfinite(value):
    return str(value)
  if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-3):
    return f"{value:.3e}"
  return f"{value:.4g}"


class MetricsWriter:
  """Appends per-step metrics to JSONL and TensorBoard; a no-op unless `is_writer`.

  The JSONL file is the source of truth (one object per step with a `step` key); a resumed run
  first drops lines with step > the restored step, so the file never shows a step twice.
  """

  def __init__(self, workdir: str | pathlib.Path, *, config: LoggingConfig, is_writer: bool):
    self.is_writer = is_writer
    self.jsonl_path = pathlib.Path(workdir) / "metrics.jsonl"
    self._tb = None
    if not is_writer:
      return
    self.jsonl_path.parent.mkdir(parents=True, exist_ok=True)
    self._jsonl = config.jsonl
    if config.tensorboard:
      import tensorboardX  # Imported lazily: only the writing process needs it.
      self._tb = tensorboardX.SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"))

  def truncate_after(self, step: int) -> None:
    """Drops JSONL records of steps > `step` (written after the checkpoint a resume starts from)."""
    if not self.is_writer or not self._jsonl or not self.jsonl_path.exists():
      return
    kept = [line for line in self.jsonl_path.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] <= step]
    self.jsonl_path.write_text("".join(line + "\n" for line in kept))

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.is_writer:
      return
    clean = {k: float(v) for k, v in metrics.items()}
    if self._jsonl:
      with self.jsonl_path.open("a") as f:
        # NaN/inf are written as JSON null-free tokens by json (NaN, Infinity); readers use json.
        f.write(json.dumps({"step": int(step), **clean}, sort_keys=True) + "\n")
    if self._tb is not None:
      for key, value in clean.items():
        self._tb.add_scalar(key, value, global_step=int(step))

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def read_jsonl(path: str | pathlib.Path) -> list[dict]:
  """All records of a metrics.jsonl file, in order."""
  text = pathlib.Path(path).read_text()
  return [json.loads(line) for line in text.splitlines() if line.strip()]
