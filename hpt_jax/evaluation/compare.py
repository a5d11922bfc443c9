"""Compares finished runs from their per-problem result files (no model needed).

`compare_runs({"GRPO": dir_a, "HPT": dir_b, ...}, out)` writes, for every benchmark the runs share:
  comparison.md / comparison.json   Table 2 with one row per run,
  comparison_pass_at_k.png          Fig. 2 with one line per run,
  exclusive_solves.md               Table 4: the reference run (first, or `reference=`) against each
                                    other run, per benchmark, by difficulty level.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Mapping

from hpt_jax.evaluation import report
from hpt_jax.evaluation import results as results_lib


@dataclasses.dataclass(frozen=True, kw_only=True)
class ComparisonPaths:
  table_md: pathlib.Path
  table_json: pathlib.Path
  plot: pathlib.Path
  exclusive_md: pathlib.Path


def compare_runs(runs: Mapping[str, str | pathlib.Path], output_dir: str | pathlib.Path, *,
                 reference: str | None = None) -> ComparisonPaths:
  """Table 2, Fig. 2 and Table 4 over several finished runs.

  Args:
    runs: run name -> its evaluation output directory (holding `<benchmark>.problems.jsonl`).
    output_dir: where the comparison files go.
    reference: the run others are compared against in Table 4 (default: the first).

  Returns:
    The written paths. Raises if a run has no results or the runs share no benchmark.
  """
  if len(runs) < 2:
    raise ValueError(f"compare_runs needs at least two runs, got {list(runs)}")
  reference = reference or next(iter(runs))
  if reference not in runs:
    raise ValueError(f"reference run {reference!r} is not among {list(runs)}")
  loaded = {name: results_lib.load_run(path) for name, path in runs.items()}
  for name, by_bench in loaded.items():
    if not by_bench:
      raise ValueError(f"run {name!r} has no per-problem results in {runs[name]}")
  shared = sorted(set.intersection(*(set(b) for b in loaded.values())))
  if not shared:
    raise ValueError(f"the runs share no benchmark: {{{', '.join(f'{n}: {sorted(b)}' for n, b in loaded.items())}}}")
  scores = {name: {b: results_lib.score_results(b, by_bench[b]) for b in shared}
            for name, by_bench in loaded.items()}
  output_dir = pathlib.Path(output_dir)
  md, js = report.write_results_table(scores, output_dir, stem="comparison")
  plot = report.plot_pass_at_k(scores, output_dir / "comparison_pass_at_k.png")
  sections = []
  for bench in shared:
    table = report.exclusive_solves_table({
        other: report.exclusive_solves(loaded[reference][bench], loaded[other][bench])
        for other in runs if other != reference})
    sections.append(f"## {bench}: {reference} vs others (+ solved only by {reference}, − only by the other)\n\n"
                    f"{table}")
  exclusive = output_dir / "exclusive_solves.md"
  exclusive.write_text("\n".join(sections))
  return ComparisonPaths(table_md=md, table_json=js, plot=plot, exclusive_md=exclusive)
