"""Training curves from a run's `metrics.jsonl`: series by metric name, and the default run's plots.

The loop writes one JSON object per step (`{"step": s, "reward/accuracy": ..., "val/accuracy_level_3":
...}`); validation keys appear only on validation steps. `series` turns the records into aligned
(steps, values) arrays per key; `plot_run` draws the three figures the built-in run reports.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import re
from typing import Iterable, Mapping, Sequence

import numpy as np

from hpt_jax import figures

VAL_LEVEL = re.compile(r"^val/accuracy_level_(\d+)$")
OFF_RATIO = "gate/off_example_ratio"
TRAIN_LENGTH = "response/length_mean"
VAL_LENGTH = "val/response_length_mean"
VAL_ACCURACY = "val/accuracy"
TRAIN_ACCURACY = "reward/accuracy"


@dataclasses.dataclass(frozen=True)
class Series:
  """One metric over steps: steps [K] int, values [K] float (only the steps that logged it)."""
  steps: np.ndarray
  values: np.ndarray


def read_records(path: str | pathlib.Path) -> list[dict]:
  """The records of a metrics.jsonl file in step order; a later record of a step replaces an earlier one.

  Raises:
    ValueError: naming the file and line of a record that is not a JSON object with an int `step`.
  """
  path = pathlib.Path(path)
  by_step: dict[int, dict] = {}
  for n, line in enumerate(path.read_text().splitlines(), start=1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}:{n}: not JSON ({e})") from e
    if not isinstance(record, dict) or not isinstance(record.get("step"), int):
      raise ValueError(f"{path}:{n}: a record needs an integer 'step' key")
    # Validation before training shares step 0 with nothing else; merge records of one step.
    by_step.setdefault(record["step"], {}).update(record)
  return [by_step[s] for s in sorted(by_step)]


def series(records: Iterable[Mapping[str, float]], key: str) -> Series:
  """(steps, values) of `key` over the records that have a finite value for it."""
  pairs = [(int(r["step"]), float(r[key])) for r in records
           if key in r and r[key] is not None and math.isfinite(float(r[key]))]
  steps = np.asarray([p[0] for p in pairs], np.int64)
  return Series(steps=steps, values=np.asarray([p[1] for p in pairs], np.float64))


def level_keys(records: Sequence[Mapping[str, float]]) -> dict[int, str]:
  """{level: "val/accuracy_level_<level>"} for every level any record validated."""
  out = {}
  for r in records:
    for k in r:
      m = VAL_LEVEL.match(k)
      if m:
        out[int(m.group(1))] = k
  return dict(sorted(out.items()))


def plot_run(records: Sequence[Mapping[str, float]], out_dir: str | pathlib.Path, *,
             title: str = "") -> dict[str, pathlib.Path]:
  """Writes accuracy.png (validation accuracy per level vs step), off_example_ratio.png and
  response_length.png into `out_dir`; returns {name: path}."""
  plt = figures.pyplot()

  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  paths = {}

  def save(fig, name):
    paths[name] = figures.save_figure(fig, out_dir / f"{name}.png")

  fig, ax = plt.subplots(figsize=(6, 4))
  for level, key in level_keys(records).items():
    s = series(records, key)
    ax.plot(s.steps, s.values, marker="o", label=f"level {level}")
  total = series(records, VAL_ACCURACY)
  if total.steps.size:
    ax.plot(total.steps, total.values, "k--", label="all levels")
  train = series(records, TRAIN_ACCURACY)
  if train.steps.size:
    ax.plot(train.steps, train.values, color="0.6", lw=0.8, label="rollout accuracy (train)")
  ax.set(xlabel="step", ylabel="accuracy", ylim=(-0.02, 1.02), title=f"{title} held-out accuracy".strip())
  ax.legend(fontsize=8)
  save(fig, "accuracy")

  fig, ax = plt.subplots(figsize=(6, 4))
  s = series(records, OFF_RATIO)
  ax.plot(s.steps, s.values)
  ax.set(xlabel="step", ylabel="off_example_ratio (demo rows / rows)", ylim=(-0.02, 1.02),
         title=f"{title} offline-data ratio".strip())
  save(fig, "off_example_ratio")

  fig, ax = plt.subplots(figsize=(6, 4))
  for key, label in ((TRAIN_LENGTH, "rollouts (train)"), (VAL_LENGTH, "held-out (validation)")):
    s = series(records, key)
    if s.steps.size:
      ax.plot(s.steps, s.values, marker="." if key == VAL_LENGTH else None, label=label)
  ax.set(xlabel="step", ylabel="response length (tokens)", title=f"{title} response length".strip())
  ax.legend(fontsize=8)
  save(fig, "response_length")
  return paths


def mean_series(runs: Sequence[Sequence[Mapping[str, float]]], key: str) -> tuple[Series, np.ndarray]:
  """(mean Series, std [K]) of `key` over several runs, on the steps every run logged.

  Raises:
    ValueError: when no step is common to all runs.
  """
  per_run = [series(r, key) for r in runs]
  common = sorted(set.intersection(*(set(s.steps.tolist()) for s in per_run))) if per_run else []
  if not common:
    raise ValueError(f"mean_series: no step has {key!r} in all {len(per_run)} runs")
  values = np.stack([[dict(zip(s.steps.tolist(), s.values))[t] for t in common] for s in per_run])
  return Series(steps=np.asarray(common), values=values.mean(0)), values.std(0)


def plot_groups(groups: Mapping[str, Sequence[Sequence[Mapping[str, float]]]], key: str,
                path: str | pathlib.Path, *, ylabel: str, title: str = "") -> pathlib.Path:
  """One line per group (the mean over its runs, a band of ± one std) of metric `key` vs step."""
  plt = figures.pyplot()

  fig, ax = plt.subplots(figsize=(6, 4))
  for label, runs in groups.items():
    try:
      mean, std = mean_series(runs, key)
    except ValueError:
      continue  # a group that never logged the key (e.g. off_example_ratio of SFT) is left out
    ax.plot(mean.steps, mean.values, marker=".", label=label)
    ax.fill_between(mean.steps, mean.values - std, mean.values + std, alpha=0.15)
  ax.set(xlabel="step", ylabel=ylabel, title=title)
  ax.legend(fontsize=8)
  return figures.save_figure(fig, path)
