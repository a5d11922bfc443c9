"""The end-of-run report: start vs final held-out accuracy per difficulty level, plus the plots.

`report_run(workdir)` reads `<workdir>/metrics.jsonl`, writes `<workdir>/plots/*.png` and
`<workdir>/summary.md`, and returns the table text and the paths, for the launcher to print.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Mapping, Sequence

from hpt_jax.reporting import curves


@dataclasses.dataclass(frozen=True)
class AccuracyRow:
  name: str  # "level 3" or "all"
  start: float
  final: float

  @property
  def change(self) -> float:
    return self.final - self.start


@dataclasses.dataclass(frozen=True)
class AccuracyTable:
  start_step: int
  final_step: int
  rows: tuple[AccuracyRow, ...]

  def format(self) -> str:
    head = f"| held-out accuracy | step {self.start_step} | step {self.final_step} | change |"
    lines = [head, "|---|---|---|---|"]
    lines += [f"| {r.name} | {r.start:.3f} | {r.final:.3f} | {r.change:+.3f} |" for r in self.rows]
    return "\n".join(lines)


def accuracy_table(records: Sequence[Mapping[str, float]]) -> AccuracyTable:
  """Accuracy per level and overall at the first and the last validation step.

  Raises:
    ValueError: when fewer than two steps validated (nothing to compare).
  """
  validated = [r for r in records if curves.VAL_ACCURACY in r]
  if len(validated) < 2:
    raise ValueError(f"accuracy_table: {len(validated)} validation record(s) in the metrics; need a "
                     "start and a final one (validation.before_training and validation.every_steps)")
  first, last = validated[0], validated[-1]
  rows = [AccuracyRow(name=f"level {level}", start=float(first[key]), final=float(last[key]))
          for level, key in curves.level_keys(validated).items() if key in first and key in last]
  rows.append(AccuracyRow(name="all", start=float(first[curves.VAL_ACCURACY]),
                          final=float(last[curves.VAL_ACCURACY])))
  return AccuracyTable(start_step=int(first["step"]), final_step=int(last["step"]), rows=tuple(rows))


@dataclasses.dataclass(frozen=True)
class RunReport:
  table: str  # Markdown
  summary: pathlib.Path
  plots: dict[str, pathlib.Path]


def report_run(workdir: str | pathlib.Path, *, title: str = "") -> RunReport:
  """Writes plots/ and summary.md for the run in `workdir` (see the module docstring)."""
  workdir = pathlib.Path(workdir)
  records = curves.read_records(workdir / "metrics.jsonl")
  plots = curves.plot_run(records, workdir / "plots", title=title)
  table = accuracy_table(records).format()
  summary = workdir / "summary.md"
  summary.write_text(f"# {title or workdir.name}\n\n{table}\n\n"
                     + "".join(f"![{name}](plots/{p.name})\n" for name, p in plots.items()))
  return RunReport(table=table, summary=summary, plots=plots)
