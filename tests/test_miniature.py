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
from hpt_jax.training.optimizer import ScheduleUnit  # noqa: E402


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
  # Equal training tokens: every run stops at the budget, and its lr schedule runs over the budget's
  # tokens; SFT→GRPO's GRPO stage gets what its SFT stage left and continues the same schedule.
  budget = ms.Spec().token_budget
  for config in (luffy, grpo, sft):
    assert config.training_token_budget == budget
    assert config.optim.schedule_unit is ScheduleUnit.TOKENS and config.optim.total_steps == budget
    assert config.optim.schedule_start == 0 and config.total_steps == ms.Spec().max_steps
  two = ms.post_configs(ms.Spec(), ms.RunKey(ms.Method.SFT_GRPO, 0), base_dir=pathlib.Path("b"),
                        task_dir=pathlib.Path("t"), stage_dir=pathlib.Path("s"), stage1_tokens=16_500)
  assert [c.training_token_budget for c in two] == [budget // 2, budget - 16_500]
  assert [c.optim.schedule_start for c in two] == [0, 16_500]
  assert [c.optim.total_steps for c in two] == [budget, budget]
  with pytest.raises(ValueError, match="stage1_tokens"):
    ms.post_configs(ms.Spec(), ms.RunKey(ms.Method.SFT_GRPO, 0), base_dir=pathlib.Path("b"),
                    task_dir=pathlib.Path("t"), stage_dir=pathlib.Path("s"), stage1_tokens=budget)
  with pytest.raises(ValueError, match="token_budget"):
    ms.Spec(token_budget=0)


def test_eval_file_extends_held_out_with_unseen_problems(tmp_path):
  from hpt_jax.data import arithmetic, load_openr1, write_openr1
  held2 = arithmetic.generate_distinct(seed=0, level=2, count=5)
  # A training file that contains the first 300 candidate extra problems' neighbourhood: every
  # level-2 problem whose first operand is 10..39 (2,700 of the 8,100).
  train = [arithmetic.make_problem(a, b, level=2) for a in range(10, 40) for b in range(10, 100)]
  train_file = write_openr1([arithmetic.to_openr1_row(q, index=i, split="train") for i, q in enumerate(train)],
                            tmp_path / "train.parquet")
  path = mini_eval.write_eval_file(tmp_path / "eval.parquet", levels=(1, 2, 3), per_level=5, extra=40,
                                   train_files=[train_file])
  examples, _ = load_openr1(path)  # the schema the evaluator's loader reads
  rows = __import__("pyarrow.parquet", fromlist=["x"]).read_table(path).to_pylist()
  by_level = {lv: [r["prompt"][-1]["content"] for r in rows if r["extra_info"]["level"] == lv] for lv in (1, 2, 3)}
  assert [len(by_level[lv]) for lv in (1, 2, 3)] == [5, 45, 45]  # level 1 gets no extra problems
  assert by_level[2][:5] == [q.question for q in held2]  # the task's own held-out set comes first
  train_q = {q.question for q in train}
  assert not train_q & set(by_level[2][5:]) and len(set(by_level[2])) == 45
  assert all(10 <= int(q.split("+")[0]) <= 99 for q in by_level[2]) and len(examples) == 95
  # Every row's answer is the sum (the verifier's ground truth).
  assert all(r["reward_model"]["ground_truth"] == str(sum(map(int, r["prompt"][-1]["content"][:-1].split("+"))))
             for r in rows)


def test_standard_errors_and_kept_analysis(tmp_path):
  res = [_result("a", 1, [1, 1]), _result("b", 1, [0, 1]), _result("c", 1, [0, 0]), _result("d", 2, [1, 0])]
  se = mini_results.standard_errors(res)
  level1 = np.array([1.0, 0.5, 0.0])
  assert se["1"] == pytest.approx(level1.std(ddof=1) / np.sqrt(3))
  assert np.isnan(se["2"])  # one problem: no spread to estimate
  # A hand-written analysis after the marker survives a regeneration of the tables.
  (tmp_path / "RESULTS.md").write_text(f"old tables\n{mini_results.ANALYSIS_MARKER}\nmy analysis\n")
  spec = ms.Spec(seeds=(0,), gammas=(0,))
  runs = {ms.RunKey(ms.Method.HPT, 0).name: mini_results.RunOutcome(key=ms.RunKey(ms.Method.HPT, 0), results=res,
                                                                  tokens=5.0, records=[])}
  usage = mini_results.Usage(wall_s=60.0, cpu_s=120.0, load_min=1.0, load_max=2.0)
  path = mini_results.write(spec, runs=runs, base=res, results_dir=tmp_path, seconds={}, usage=usage)
  text = path.read_text()
  assert "old tables" not in text and text.rstrip().endswith("my analysis")
  # Level 1: (1 + 1/2 + 0)/3; level 2: 1/2; all: (1 + 1/2 + 0 + 1/2)/4; 5 trained tokens.
  assert "| HPT (γ = 0) | 50.0 | 50.0 | 50.0 | 5 |" in text and "2.0 CPU-min" in text


@pytest.mark.slow
def test_miniature_end_to_end(tmp_path):
  import run
  run.main(["--smoke", "--workdir", str(tmp_path / "work"), "--results_dir", str(tmp_path / "res")])
  text = (tmp_path / "res" / "RESULTS.md").read_text()
  assert "SMOKE run" in text and "Table 4 analogue" in text and "| SFT→GRPO | +" in text and "| HPT γ = 0 |" in text
  assert "INCOMPLETE" not in text
  # Both runs reached the token budget (a run stops at the first step that does); SFT→GRPO's stages
  # together, its GRPO stage with what the SFT stage left.
  budget = run.SMOKE["token_budget"]
  work = tmp_path / "work"
  hpt = [json.loads(l) for l in (work / "hpt_g0_s0" / "metrics.jsonl").read_text().splitlines()]
  assert hpt[-1]["train/tokens_total"] >= budget > hpt[-2]["train/tokens_total"]
  stage1 = [json.loads(l) for l in (work / "sft_grpo_s0" / "stage1" / "metrics.jsonl").read_text().splitlines()]
  stage2 = [json.loads(l) for l in (work / "sft_grpo_s0" / "metrics.jsonl").read_text().splitlines()]
  assert stage1[-1]["train/tokens_total"] >= budget // 2
  assert stage1[-1]["train/tokens_total"] + stage2[-1]["train/tokens_total"] >= budget
  # A --report_only rewrite keeps the training invocation's measured cost, and says it regenerated.
  cost = next(l for l in text.splitlines() if l.startswith("This invocation: **"))
  run.main(["--report_only", "--workdir", str(work), "--results_dir", str(tmp_path / "res")])
  again = (tmp_path / "res" / "RESULTS.md").read_text()
  assert cost.replace("This invocation", "The invocation that trained these runs") in again
  assert "regenerated from its runs afterwards by `--report_only`" in again
  for name in ("val_accuracy", "off_example_ratio", "response_length"):
    assert (tmp_path / "res" / "plots" / f"{name}.png").stat().st_size > 1000
  # The HPT row's level-1 cell equals avg@k recomputed from the evaluator's per-problem file.
  rows = [json.loads(l) for l in (tmp_path / "work" / "hpt_g0_s0" / "eval" / "builtin.problems.jsonl").read_text().splitlines()]
  level1 = [np.mean(r["correct"]) for r in rows if str(r["level"]) == "1"]
  line = next(l for l in text.splitlines() if l.startswith("| HPT (γ = 0) |"))
  assert line.split("|")[2].strip() == f"{100 * np.mean(level1):.1f}"


def test_trailing_mean_and_stage_curves_continue_steps_and_tokens(tmp_path):
  values = [3.0, 1.0, 4.0, 1.0, 5.0]
  expected = [np.mean(values[max(0, i - 2):i + 1]) for i in range(len(values))]  # windows of 3
  np.testing.assert_allclose(mini_results.trailing_mean(values, 3), expected)
  for name, recs in (("s1", [{"step": 1, "train/tokens_total": 10.0}, {"step": 2, "train/tokens_total": 25.0}]),
                     ("s2", [{"step": 1, "train/tokens_total": 7.0}, {"step": 2, "val/accuracy": 0.5}])):
    (tmp_path / name).mkdir()
    (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
  out = mini_results.read_curve(tmp_path / "s1", tmp_path / "s2", offset=2, token_offset=25.0)
  assert [r["step"] for r in out] == [1, 2, 3, 4]
  assert [r.get("train/tokens_total") for r in out] == [10.0, 25.0, 32.0, None]
