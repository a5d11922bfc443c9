"""Per-problem result files, Table 2 / Table 4 / Fig. 2 outputs, against hand-derived values."""

import json

import matplotlib.image
import numpy as np
import pytest

from hpt_jax.evaluation import benchmarks as bm
from hpt_jax.evaluation import metrics
from hpt_jax.evaluation import report
from hpt_jax.evaluation import results as res


def _result(pid, correct, level=None, bench="math500"):
  return res.ProblemResult(benchmark=bench, problem_id=pid, level=level, answer="1", correct=tuple(correct))


def test_result_file_roundtrip_torn_tail_and_protocol_guard(tmp_path):
  proto = bm.Protocol(num_samples=2)
  rows = [_result("a", [True, False]), res.ProblemResult(
      benchmark="math500", problem_id="b", level="3", answer=("1", "2"), correct=(False, False),
      responses=("x", "y"), response_lengths=(3, 4), truncated=(False, True))]
  with res.ResultWriter(tmp_path, "math500", proto) as w:
    for r in rows:
      w.write(r)
  path = res.results_path(tmp_path, "math500")
  assert res.read_results(path) == rows
  # A crash mid-append leaves a line without "\n": it is dropped by the reader and cut by the writer.
  with path.open("a") as f:
    f.write('{"benchmark": "math500", "problem_id": "c", "lev')
  assert res.read_results(path) == rows
  with res.ResultWriter(tmp_path, "math500", proto) as w:
    w.write(_result("c", [True, True]))
  assert [r.problem_id for r in res.read_results(path)] == ["a", "b", "c"]
  with pytest.raises(ValueError, match="sampled with protocol"):
    res.ResultWriter(tmp_path, "math500", bm.Protocol(num_samples=4))
  # Damage anywhere but the tail is an error naming the line.
  path.write_text(path.read_text().replace('"problem_id": "b"', '"problem_i": "b"'))
  with pytest.raises(ValueError, match=r"math500\.problems\.jsonl: line 2"):
    res.read_results(path)


def _scores(run_values):
  # run -> bench -> list of per-problem correct counts with n = 2
  return {run: {b: metrics.score_benchmark(benchmark=b, num_samples=[2] * len(c), num_correct=c)
                for b, c in by_b.items()} for run, by_b in run_values.items()}


def test_results_table_shape_and_values(tmp_path):
  scores = _scores({
      "base": {"aime24": [0, 1], "math500": [2, 2], "gpqa_diamond": [1, 1], "arc_c": [0, 2], "builtin": [2, 0]},
      "hpt": {"aime24": [2, 1], "math500": [2, 1]},
  })
  markdown, data = report.results_table(scores)
  lines = markdown.strip().split("\n")
  assert lines[0] == "| Model | builtin | Avg | AIME24 | MATH-500 | ID Avg | ARC-c | GPQA | OOD Avg |"
  # base: builtin 50, aime24 25, math500 100, ID avg 62.5, arc 50, gpqa 50, OOD 50.
  assert lines[2] == "| base | 50.0 | 50.0 | 25.0 | 100.0 | 62.5 | 50.0 | 50.0 | 50.0 |"
  # hpt lacks builtin and the OOD sets: those averages are blank, not averages of nothing.
  assert lines[3] == "| hpt | – | – | 75.0 | 75.0 | 75.0 | – | – | – |"
  assert data["runs"]["base"]["averages"] == {"Avg": 0.5, "ID Avg": 0.625, "OOD Avg": 0.5}
  assert data["runs"]["hpt"]["averages"]["OOD Avg"] is None
  # pass@2 with n = 2 is the fraction of problems with any correct sample: aime24 1/2, math500 2/2.
  assert data["runs"]["base"]["pass_at_k_averages"]["ID Avg"] == {"1": 0.625, "2": 0.75}
  assert data["runs"]["hpt"]["pass_at_k_averages"]["OOD Avg"] is None
  md, js = report.write_results_table(scores, tmp_path)
  assert md.read_text() == markdown and json.loads(js.read_text()) == data


def test_exclusive_solves_by_level():
  a = [_result("1", [1], "1"), _result("2", [0], "1"), _result("3", [1], "2"), _result("4", [1], "2"),
       _result("5", [0, 1], "10"), _result("6", [0], "2")]
  b = [_result("1", [1], "1"), _result("2", [1], "1"), _result("3", [0], "2"), _result("4", [0], "2"),
       _result("5", [0, 0], "10"), _result("6", [0], "2")]
  rows = report.exclusive_solves(a, b)
  assert [(r.level, r.total, r.plus, r.minus) for r in rows] == [
      ("1", 2, 0, 1), ("2", 3, 2, 0), ("10", 1, 1, 0), ("Overall", 6, 3, 1)]
  table = report.exclusive_solves_table({"GRPO": rows})
  assert "| GRPO | +0/−1 | +2/−0 | +1/−0 | +3/−1 |" in table
  assert "| GRPO (%) | +0.0/−50.0 | +66.7/−0.0 | +100.0/−0.0 | +50.0/−16.7 |" in table
  assert table.startswith("| vs | L1 (N=2) | L2 (N=3) | L10 (N=1) | Overall (6) |")
  with pytest.raises(ValueError, match=r"only in A \['6'\]"):
    report.exclusive_solves(a, b[:-1])


def test_plot_pass_at_k_writes_png(tmp_path):
  scores = {"grpo": {"aime24": metrics.score_benchmark(benchmark="aime24", num_samples=[8, 8],
                                                         num_correct=[0, 1])},
            "hpt": {"aime24": metrics.score_benchmark(benchmark="aime24", num_samples=[8, 8],
                                                        num_correct=[2, 5])}}
  path = report.plot_pass_at_k(scores, tmp_path / "fig" / "pass_at_k.png")
  image = matplotlib.image.imread(path)
  assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
  # Curves drawn: plenty of non-white pixels of more than one colour.
  rgb = image[..., :3].reshape(-1, 3)
  assert len(np.unique(np.round(rgb[(rgb < 0.9).any(1)], 1), axis=0)) > 2


def test_compare_runs_from_result_files(tmp_path):
  from hpt_jax.evaluation import compare
  proto = bm.Protocol(num_samples=1)
  runs = {"HPT": [1, 1, 0, 1], "GRPO": [1, 0, 1, 0]}  # correct flag of problems 0..3
  for name, flags in runs.items():
    with res.ResultWriter(tmp_path / name, "math500", proto) as w:
      for i, c in enumerate(flags):
        w.write(_result(str(i), [c], level=str(1 + i % 2)))
  with res.ResultWriter(tmp_path / "HPT", "aime24", proto) as w:  # only one run has it: left out
    w.write(_result("0", [1], bench="aime24"))
  paths = compare.compare_runs({n: tmp_path / n for n in runs}, tmp_path / "cmp")
  table = paths.table_md.read_text().splitlines()
  assert table[0] == "| Model | MATH-500 | ID Avg |"
  assert table[2:] == ["| HPT | 75.0 | 75.0 |", "| GRPO | 50.0 | 50.0 |"]
  # Level 1 = problems 0, 2: HPT solves {0}, GRPO {0, 2}; level 2 = problems 1, 3: HPT {1, 3}, GRPO {}.
  assert "| GRPO | +0/−1 | +2/−0 | +2/−1 |" in paths.exclusive_md.read_text()
  assert paths.plot.is_file()
  with pytest.raises(ValueError, match="at least two runs"):
    compare.compare_runs({"HPT": tmp_path / "HPT"}, tmp_path / "cmp")
