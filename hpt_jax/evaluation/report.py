"""Comparison outputs: the paper's Table 2 (Markdown + JSON), Table 4 (exclusive solves), Fig. 2 (pass@k).

- `results_table`: benchmarks as columns, runs as rows, avg@k in percent, with group averages ("ID Avg"
  over the six math sets, "OOD Avg" over ARC-c and GPQA-Diamond, as in Table 2). A group's average is
  shown only when a run has every benchmark of that group that appears in the table, so a missing number
  never silently shrinks an average.
- `exclusive_solves`: problems solved by run A and not B ("+X") and the reverse ("−Y"), per difficulty
  level and overall, in counts and percent of the level's size (Table 4). A problem counts as solved when
  at least one of its samples is correct (with n = 1, the paper's MATH-500 protocol, that is its one
  sample).
- `plot_pass_at_k`: one panel per benchmark, one line per run, pass@k against k on a log2 axis (Fig. 2).
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from collections.abc import Mapping, Sequence

from hpt_jax import figures
from hpt_jax.evaluation import metrics
from hpt_jax.evaluation import results as results_lib

# Column order and groups of Table 2. Benchmarks outside these groups (the built-in task, custom sets)
# come first, under their own "Avg".
ID_BENCHMARKS = ("aime24", "aime25", "amc", "math500", "minerva", "olympiadbench")
OOD_BENCHMARKS = ("arc_c", "gpqa_diamond")
_GROUPS = (("ID Avg", ID_BENCHMARKS), ("OOD Avg", OOD_BENCHMARKS))
_DISPLAY = {"aime24": "AIME24", "aime25": "AIME25", "amc": "AMC", "math500": "MATH-500",
            "minerva": "Minerva", "olympiadbench": "Olympiad", "arc_c": "ARC-c", "gpqa_diamond": "GPQA"}

Scores = Mapping[str, Mapping[str, metrics.BenchmarkScore]]  # run name -> benchmark -> score


def _columns(benchmarks: set[str]) -> list[tuple[str, tuple[str, ...] | None]]:
  """Table columns as (header, None) for a benchmark or (header, members) for a group average."""
  grouped = set(ID_BENCHMARKS) | set(OOD_BENCHMARKS)
  other = tuple(sorted(benchmarks - grouped))
  cols: list[tuple[str, tuple[str, ...] | None]] = []
  for header, members in (("Avg", other),) + _GROUPS:
    present = tuple(b for b in members if b in benchmarks)
    if not present:
      continue
    cols += [(b, None) for b in present]
    cols.append((header, present))
  return cols


def results_table(scores: Scores) -> tuple[str, dict]:
  """Table 2: Markdown string and a JSON-ready dict.

  Args:
    scores: run name -> benchmark name -> `BenchmarkScore`.

  Returns:
    (markdown, data); data = {"columns": [...], "runs": {run: {"benchmarks": {name: score json},
    "averages": {header: avg@k mean or None}, "pass_at_k_averages": {header: {k: mean pass@k} or None}}}}
    with fractions in [0, 1] (pass@k averaged for k up to the group's smallest n); the Markdown shows
    percent.
  """
  if not scores:
    raise ValueError("results_table needs at least one run")
  all_benchmarks = {b for run in scores.values() for b in run}
  cols = _columns(all_benchmarks)
  headers = [_DISPLAY.get(h, h) if members is None else h for h, members in cols]
  lines = ["| Model | " + " | ".join(headers) + " |", "|---" * (len(cols) + 1) + "|"]
  data: dict = {"columns": headers, "runs": {}}
  for run, by_bench in scores.items():
    cells, averages, pass_averages = [], {}, {}
    for header, members in cols:
      if members is None:
        score = by_bench.get(header)
        cells.append("–" if score is None else f"{100 * score.avg_at_k:.1f}")
        continue
      if all(b in by_bench for b in members):
        avg = metrics.average_over_benchmarks([by_bench[b] for b in members])
        averages[header] = avg
        pass_averages[header] = {str(k): v for k, v in metrics.average_pass_at_k(
            [by_bench[b] for b in members]).items()}
        cells.append(f"{100 * avg:.1f}")
      else:
        averages[header] = pass_averages[header] = None
        cells.append("–")
    lines.append(f"| {run} | " + " | ".join(cells) + " |")
    data["runs"][run] = {"benchmarks": {b: s.to_json() for b, s in by_bench.items()}, "averages": averages,
                         "pass_at_k_averages": pass_averages}
  return "\n".join(lines) + "\n", data


def write_results_table(scores: Scores, output_dir: str | pathlib.Path, *,
                        stem: str = "results") -> tuple[pathlib.Path, pathlib.Path]:
  """Writes `<stem>.md` and `<stem>.json` under output_dir; returns their paths."""
  output_dir = pathlib.Path(output_dir)
  output_dir.mkdir(parents=True, exist_ok=True)
  markdown, data = results_table(scores)
  md_path, json_path = output_dir / f"{stem}.md", output_dir / f"{stem}.json"
  md_path.write_text(markdown)
  json_path.write_text(json.dumps(data, indent=2) + "\n")
  return md_path, json_path


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExclusiveSolves:
  """Exclusive solves within one level: `plus` solved by A only, `minus` by B only, out of `total`."""
  level: str
  total: int
  plus: int
  minus: int

  @property
  def plus_pct(self) -> float:
    return 100.0 * self.plus / self.total

  @property
  def minus_pct(self) -> float:
    return 100.0 * self.minus / self.total


def _level_key(level: str) -> tuple:
  # Numeric levels sort as numbers ("2" before "10"); others after, alphabetically.
  try:
    return (0, float(level), level)
  except ValueError:
    return (1, 0.0, level)


def exclusive_solves(run_a: Sequence[results_lib.ProblemResult],
                     run_b: Sequence[results_lib.ProblemResult]) -> list[ExclusiveSolves]:
  """Table 4's "+X/−Y" per difficulty level, then "Overall".

  Args:
    run_a, run_b: per-problem results of the same benchmark (same problem ids).

  Returns:
    One `ExclusiveSolves` per level (sorted; problems without a level go under "all"), then "Overall".
  """
  a = {r.problem_id: r for r in run_a}
  b = {r.problem_id: r for r in run_b}
  if a.keys() != b.keys():
    only_a, only_b = sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())
    raise ValueError(f"runs cover different problems: only in A {only_a[:5]}, only in B {only_b[:5]}")
  if not a:
    raise ValueError("exclusive_solves needs at least one problem")
  by_level: dict[str, list[tuple[bool, bool]]] = {}
  for pid, ra in a.items():
    solved = (ra.num_correct > 0, b[pid].num_correct > 0)
    by_level.setdefault("all" if ra.level is None else str(ra.level), []).append(solved)
  rows = []
  for level in sorted(by_level, key=_level_key):
    pairs = by_level[level]
    rows.append(ExclusiveSolves(level=level, total=len(pairs), plus=sum(x and not y for x, y in pairs),
                                minus=sum(y and not x for x, y in pairs)))
  rows.append(ExclusiveSolves(level="Overall", total=sum(r.total for r in rows),
                              plus=sum(r.plus for r in rows), minus=sum(r.minus for r in rows)))
  return rows


def exclusive_solves_table(comparisons: Mapping[str, Sequence[ExclusiveSolves]]) -> str:
  """Markdown shaped like Table 4: per baseline a counts row and a percent row.

  Args:
    comparisons: baseline name -> `exclusive_solves(ours, baseline)` (all over the same levels).
  """
  if not comparisons:
    raise ValueError("exclusive_solves_table needs at least one comparison")
  first = next(iter(comparisons.values()))
  heads = [f"L{r.level} (N={r.total})" if r.level != "Overall" else f"Overall ({r.total})" for r in first]
  lines = ["| vs | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
  for name, rows in comparisons.items():
    if [r.level for r in rows] != [r.level for r in first]:
      raise ValueError(f"comparison {name!r} has levels {[r.level for r in rows]}, expected "
                       f"{[r.level for r in first]}")
    lines.append(f"| {name} | " + " | ".join(f"+{r.plus}/−{r.minus}" for r in rows) + " |")
    lines.append(f"| {name} (%) | " + " | ".join(f"+{r.plus_pct:.1f}/−{r.minus_pct:.1f}" for r in rows)
                 + " |")
  return "\n".join(lines) + "\n"


def plot_pass_at_k(scores: Scores, path: str | pathlib.Path, *,
                   benchmarks: Sequence[str] | None = None) -> pathlib.Path:
  """Fig. 2: pass@k curves of several runs, one panel per benchmark, saved as a PNG.

  Args:
    scores: run name -> benchmark -> score (its `pass_at_k` holds k = 1..n).
    path: output PNG path.
    benchmarks: panels to draw (default: every benchmark of any run, in Table 2 order).
  """
  plt = figures.pyplot()

  if benchmarks is None:
    benchmarks = [h for h, members in _columns({b for r in scores.values() for b in r}) if members is None]
  if not benchmarks:
    raise ValueError("plot_pass_at_k needs at least one benchmark")
  cols = min(3, len(benchmarks))
  rows = math.ceil(len(benchmarks) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
  for ax, bench in zip(axes.flat, benchmarks):
    for run, by_bench in scores.items():
      if bench not in by_bench:
        continue
      curve = by_bench[bench].pass_at_k
      ks = sorted(curve)
      ax.plot(ks, [100 * curve[k] for k in ks], marker="o", markersize=3, label=run)
    ax.set_xscale("log", base=2)
    ax.set_title(_DISPLAY.get(bench, bench))
    ax.set_xlabel("k")
    ax.set_ylabel("pass@k (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  for ax in list(axes.flat)[len(benchmarks):]:
    ax.set_visible(False)
  return figures.save_figure(fig, path, dpi=120)
