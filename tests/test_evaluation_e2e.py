"""End to end on a tiny random Qwen2 (built with `transformers`, saved with save_pretrained) and the
built-in task's locally trained tokenizer: HF import → harness prompts → jitted sampler → verifier → results, table,
JSON and plot; an interrupted run resumes, skipping finished problems, and matches an uninterrupted one.
"""

import json

import matplotlib.image
import pytest

from hpt_jax import evaluation
from hpt_jax import sampling
from hpt_jax.evaluation import build
from hpt_jax.evaluation import results as res
from hpt_jax.rewards import verifier


@pytest.fixture(scope="module")
def builtin_task(tmp_path_factory):
  from hpt_jax import data
  return data.materialize_builtin_task(tmp_path_factory.mktemp("builtin"), data.BuiltinTaskConfig(
      levels=(1, 2), train_per_level=30, eval_per_level=3, vocab_size=300))


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, builtin_task):
  """A tiny random Qwen2 saved by `transformers`, with the built-in task's tokenizer (ChatML template)."""
  import torch
  import transformers

  path = tmp_path_factory.mktemp("tiny_qwen")
  tokenizer = transformers.AutoTokenizer.from_pretrained(builtin_task.tokenizer_dir)
  tokenizer.save_pretrained(path)
  config = transformers.Qwen2Config(
      vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
  torch.manual_seed(0)
  transformers.Qwen2ForCausalLM(config).save_pretrained(path)
  return path


@pytest.fixture(scope="module")
def data_dir(builtin_task):
  path = builtin_task.root / "eval"  # holds builtin.parquet; the public-schema files go next to it
  math500 = [{"problem": f"What is {a} plus {a + 3}?", "answer": str(2 * a + 3), "level": 1 + a % 3,
              "unique_id": f"test/algebra/{a}.json", "subject": "Algebra", "solution": "-"} for a in range(5)]
  (path / "math500.jsonl").write_text("".join(json.dumps(r) + "\n" for r in math500))
  amc = [{"id": i, "problem": f"Compute {i} times 2.", "answer": float(2 * i), "url": "-"} for i in range(3)]
  (path / "amc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in amc))
  return path


def test_builtin_heldout_file_and_prompt_styles(builtin_task, data_dir):
  import transformers
  from hpt_jax.data import arithmetic
  problems = evaluation.load_benchmark("builtin", evaluation.find_benchmark_file(data_dir, "builtin"))
  expected = [p for level in (1, 2) for p in arithmetic.generate_distinct(seed=0, level=level, count=3)]
  assert [(p.problem_id, p.question, p.answer, p.level) for p in problems] == [
      (str(i), e.question, e.answer, str(e.level)) for i, e in enumerate(expected)]
  tok = transformers.AutoTokenizer.from_pretrained(builtin_task.tokenizer_dir)
  q = problems[0].question
  im = lambda role, text: f"<|im_start|>{role}\n{text}<|im_end|>\n"  # noqa: E731
  assert build.make_render(build.PromptStyle.HARNESS, tok)(q) == (
      im("system", build.SIMPLERL_SYSTEM_PROMPT) + im("user", q) + "<|im_start|>assistant\n")
  # CHAT keeps the template's own default system prompt: the one the built-in task trains with.
  from hpt_jax import data
  assert build.make_render(build.PromptStyle.CHAT, tok)(q) == (
      im("system", data.BUILTIN_SYSTEM_PROMPT) + im("user", q) + "<|im_start|>assistant\n")
  assert build.make_render(build.PromptStyle.LLAMA_ZERO, tok)(q) == (
      f"Question:\n{q}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
      "\nAnswer:\nLet's think step by step.")


@pytest.fixture
def cli_flags():
  from absl import flags
  yield flags.FLAGS
  flags.FLAGS.unparse_flags()


class CountingBackend:
  """Wraps the real backend, recording which problems (prompt ids) each call samples; can crash."""

  def __init__(self, inner, crash_after=None):
    self.inner, self.crash_after, self.sampled = inner, crash_after, []

  def prompt_bucket(self, prompt):
    return self.inner.prompt_bucket(prompt)

  def generate(self, params, prompts, **kw):
    if self.crash_after is not None and len(self.sampled) >= self.crash_after:
      raise KeyboardInterrupt
    self.sampled.append(sorted(set(kw["prompt_ids"])))
    return self.inner.generate(params, prompts, **kw)


def _jobs(data_dir):
  return [evaluation.make_job(name, evaluation.find_benchmark_file(data_dir, name), num_samples=2,
                              max_new_tokens=8) for name in ("math500", "amc", "builtin")]


@pytest.mark.slow
def test_tiny_model_end_to_end_with_resume(hf_dir, data_dir, tmp_path, cli_flags):
  loaded = build.load_hf_model(hf_dir)
  evaluator = build.build_evaluator(loaded, buckets=sampling.Buckets(prompt=(64, 128), response=(8,)),
                                    batch_rows=4, progress=False)
  real = evaluator.backend
  jobs = _jobs(data_dir)
  out = tmp_path / "run"

  evaluator.backend = CountingBackend(real, crash_after=1)
  with pytest.raises(KeyboardInterrupt):
    evaluator.evaluate(loaded.params, jobs, output_dir=out)
  (first,) = evaluator.backend.sampled  # one call = 2 problems of math500 done
  assert len(res.read_results(res.results_path(out, "math500"))) == len(first) == 2

  evaluator.backend = CountingBackend(real)
  scores = evaluator.evaluate(loaded.params, jobs, output_dir=out)
  resumed = [pid for call in evaluator.backend.sampled for pid in call]
  assert len(resumed) == (5 - 2) + 3 + 6  # finished problems are not sampled again
  paths = evaluation.write_report(scores, out, run_name="tiny")

  # An uninterrupted run draws exactly the same samples (per-row keys from seed, problem, sample index).
  evaluator.backend = real
  fresh = evaluator.evaluate(loaded.params, jobs, output_dir=tmp_path / "fresh")
  assert fresh == scores
  for name in ("math500", "amc", "builtin"):
    resumed_rows = res.read_results(res.results_path(out, name))
    fresh_rows = res.read_results(res.results_path(tmp_path / "fresh", name))
    key = lambda r: r.problem_id  # noqa: E731
    assert sorted(resumed_rows, key=key) == sorted(fresh_rows, key=key)
    for r in resumed_rows:
      assert len(r.responses) == 2 and all(0 < n <= 8 for n in r.response_lengths)
      # Grades equal an independent call of the training reward on the stored responses.
      assert r.correct == tuple(verifier.compute_score(t, r.answer) == 1.0 for t in r.responses)
    expected = evaluation.score_results(name, resumed_rows)
    assert scores[name] == expected

  table = paths.table_md.read_text()
  assert table.splitlines()[0] == "| Model | builtin | Avg | AMC | MATH-500 | ID Avg |"
  pct = {name: f"{100 * score.avg_at_k:.1f}" for name, score in scores.items()}
  row = f"| tiny | {pct['builtin']} | {pct['builtin']} | {pct['amc']} | {pct['math500']} |"
  assert table.splitlines()[2].startswith(row)
  data = json.loads(paths.table_json.read_text())
  assert data["runs"]["tiny"]["benchmarks"]["math500"]["num_problems"] == 5
  assert matplotlib.image.imread(paths.plot).shape[0] > 100
  levels = {r.level for r in res.read_results(res.results_path(out, "math500"))}
  assert levels == {"1", "2", "3"}

  # The CLI with the same settings writes the same table (and grades in a reward pool).
  from hpt_jax import evaluate
  cli_flags(["evaluate", f"--hf_dir={hf_dir}", f"--data_dir={data_dir}", f"--output_dir={tmp_path / 'cli'}",
             "--benchmarks=math500,amc,builtin", "--run_name=tiny", "--num_samples=2", "--max_new_tokens=8",
             "--batch_rows=4", "--prompt_buckets=64,128", "--response_buckets=8", "--reward_workers=1"])
  evaluate.main([])
  assert (tmp_path / "cli" / "results.md").read_text() == table
  assert json.loads((tmp_path / "cli" / "results.json").read_text()) == data
  assert (tmp_path / "cli" / "pass_at_k.png").is_file()


def test_cli_rejects_unknown_benchmark_and_missing_file(data_dir, tmp_path, cli_flags):
  from absl import app
  from hpt_jax import evaluate
  argv = ["evaluate", "--hf_dir=/nonexistent", f"--data_dir={data_dir}", f"--output_dir={tmp_path}"]
  # Both are refused before any model is loaded (the model dir does not even exist).
  cli_flags(argv + ["--benchmarks=math500,aime23"])
  with pytest.raises(app.UsageError, match=r"unknown benchmark 'aime23'; known benchmarks: .*aime24"):
    evaluate.main([])
  cli_flags.unparse_flags()
  cli_flags(argv + ["--benchmarks=aime25"])
  with pytest.raises(app.UsageError, match=r"no file for benchmark 'aime25'; tried: .*aime25\.jsonl"):
    evaluate.main([])


def test_cli_compares_finished_runs(tmp_path, cli_flags, capsys):
  from hpt_jax import evaluate
  from hpt_jax.evaluation import benchmarks as bm
  for name, flags_ in (("a", [1, 0]), ("b", [0, 0])):
    with res.ResultWriter(tmp_path / name, "math500", bm.Protocol()) as w:
      for i, c in enumerate(flags_):
        w.write(res.ProblemResult(benchmark="math500", problem_id=str(i), level="1", answer="1",
                                  correct=(bool(c),)))
  cli_flags(["evaluate", f"--compare=A={tmp_path / 'a'},B={tmp_path / 'b'}", f"--output_dir={tmp_path / 'c'}"])
  evaluate.main([])
  assert "| A | 50.0 | 50.0 |" in capsys.readouterr().out
  assert "| B | +1/−0 | +1/−0 |" in (tmp_path / "c" / "exclusive_solves.md").read_text()
