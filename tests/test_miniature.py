"""experiments/miniature: the results tables against hand-computed values, and a minuscule end-to-end run.

References: synthetic per-problem results with hand-counted scores / exclusive solves; for the
end-to-end run, avg@k recomputed with NumPy from the per-problem JSONL the evaluator wrote.
"""

import json
import pathlib
import sys

import numpy as np
import pytest

MINI = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "miniature"
sys.path.insert(0, str(MINI))

import mini_eval  # noqa: E402
import mini_results  # noqa: E402
import mini_setup as ms  # noqa: E402
from hpt_jax.evaluation.results import ProblemResult  # noqa: E402


def _result(pid, level, correct):
  return ProblemResult(benchmark="builtin", problem_id=pid, level=str(level), answer="1", correct=tuple(correct))


def test_level_scores_and_exclusive_table():
  hpt = [_result("a", 1, [1, 1]), _result("b", 1, [0, 1]), _result("c", 2, [0, 0]), _result("d", 2, [1, 0])]
  base = [_result("a", 1, [1, 0]), _result("b", 1, [0, 0]), _result("c", 2, [1, 0]), _result("d", 2, [0, 0])]
  assert mini_eval.level_scores(hpt) == {"1": 0.75, "2": 0.25, "all": 0.5}
  spec = ms.Spec(seeds=(0,))
  runs = {ms.RunKey(m, 0).name: mini_results.RunOutcome(key=ms.RunKey(m, 0), results=base, tokens=1.0, records=[])
          for m in ms.Method if m is not ms.Method.HPT}
  runs[ms.RunKey(ms.Method.HPT, 0).name] = mini_results.RunOutcome(key=ms.RunKey(ms.Method.HPT, 0), results=hpt,
                                                                   tokens=1.0, records=[])
  table = mini_results._exclusive(runs, spec)
  # Level 1: b solved by HPT only. Level 2: d by HPT only, c by the baseline only.
  assert "| L1 (N=2) | L2 (N=2) | Overall (4) |" in table
  assert "| GRPO | +1/−0 | +1/−1 | +2/−1 |" in table


def test_run_keys_cover_table2_and_table6():
  keys = ms.all_runs(ms.Spec(seeds=(0, 1, 2), gammas=(0, 1, 2)))
  assert len(keys) == 3 * 5 + 3 * 2
  assert len({k.name for k in keys}) == len(keys)
  luffy = ms.post_configs(ms.Spec(), ms.RunKey(ms.Method.LUFFY, 0), base_dir=pathlib.Path("b"),
                          task_dir=pathlib.Path("t"))[0]
  grpo = ms.post_configs(ms.Spec(), ms.RunKey(ms.Method.GRPO, 0), base_dir=pathlib.Path("b"),
                         task_dir=pathlib.Path("t"))[0]
  sft = ms.post_configs(ms.Spec(), ms.RunKey(ms.Method.SFT, 0), base_dir=pathlib.Path("b"),
                        task_dir=pathlib.Path("t"))[0]
  # Equal rows per step: 8 rollouts; 7 rollouts + 1 demonstration; 8 demonstrations per question.
  assert grpo.sampling.rollouts_per_prompt == 8 and luffy.sampling.rollouts_per_prompt == 7
  assert sft.batch.prompts_per_step == 8 * grpo.batch.prompts_per_step
  two = ms.post_configs(ms.Spec(), ms.RunKey(ms.Method.SFT_GRPO, 0), base_dir=pathlib.Path("b"),
                        task_dir=pathlib.Path("t"), stage_dir=pathlib.Path("s"))
  assert sum(c.total_steps for c in two) == ms.Spec().steps


@pytest.mark.slow
def test_miniature_end_to_end(tmp_path):
  import run
  run.main(["--smoke", "--workdir", str(tmp_path / "work"), "--results_dir", str(tmp_path / "res")])
  text = (tmp_path / "res" / "RESULTS.md").read_text()
  assert "SMOKE run" in text and "Table 4 analogue" in text and "| GRPO | +" in text and "| HPT γ = 0 |" in text
  for name in ("val_accuracy", "off_example_ratio", "response_length"):
    assert (tmp_path / "res" / "plots" / f"{name}.png").stat().st_size > 1000
  # The HPT row's level-1 cell equals avg@k recomputed from the evaluator's per-problem file.
  rows = [json.loads(l) for l in (tmp_path / "work" / "hpt_g0_s0" / "eval" / "builtin.problems.jsonl").read_text().splitlines()]
  level1 = [np.mean(r["correct"]) for r in rows if str(r["level"]) == "1"]
  line = next(l for l in text.splitlines() if l.startswith("| HPT (γ = 0) |"))
  assert line.split("|")[2].strip() == f"{100 * np.mean(level1):.1f}"
