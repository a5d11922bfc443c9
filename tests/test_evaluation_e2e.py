"""End to end on a tiny random Qwen2 (built with `transformers`, saved with save_pretrained) and a
tokenizer trained here: HF import → harness prompts → jitted sampler → verifier → results, table,
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

_CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  import tokenizers
  import torch
  import transformers
  from tokenizers import decoders, models, pre_tokenizers, trainers

  path = tmp_path_factory.mktemp("tiny_qwen")
  corpus = [build.SIMPLERL_SYSTEM_PROMPT, "system user assistant"] + [
      f"What is {a} plus {a + 3}? The answer is \\boxed{{{2 * a + 3}}}." for a in range(50)]
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(corpus, trainers.BpeTrainer(
      vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                              pad_token="<|endoftext|>")
  fast.chat_template = _CHAT
  fast.save_pretrained(path)
  config = transformers.Qwen2Config(
      vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
      num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
      eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id)
  torch.manual_seed(0)
  transformers.Qwen2ForCausalLM(config).save_pretrained(path)
  return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("bench")
  math500 = [{"problem": f"What is {a} plus {a + 3}?", "answer": str(2 * a + 3), "level": 1 + a % 3,
              "unique_id": f"test/algebra/{a}.json", "subject": "Algebra", "solution": "-"} for a in range(5)]
  (path / "math500.jsonl").write_text("".join(json.dumps(r) + "\n" for r in math500))
  amc = [{"id": i, "problem": f"Compute {i} times 2.", "answer": float(2 * i), "url": "-"} for i in range(3)]
  (path / "amc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in amc))
  return path


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
                              max_new_tokens=8) for name in ("math500", "amc")]


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
  assert len(resumed) == (5 - 2) + 3  # finished problems are not sampled again
  paths = evaluation.write_report(scores, out, run_name="tiny")

  # An uninterrupted run draws exactly the same samples (per-row keys from seed, problem, sample index).
  evaluator.backend = real
  fresh = evaluator.evaluate(loaded.params, jobs, output_dir=tmp_path / "fresh")
  assert fresh == scores
  for name in ("math500", "amc"):
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
  assert table.splitlines()[0] == "| Model | AMC | MATH-500 | ID Avg |"
  row = f"| tiny | {100 * scores['amc'].avg_at_k:.1f} | {100 * scores['math500'].avg_at_k:.1f} |"
  assert table.splitlines()[2].startswith(row)
  data = json.loads(paths.table_json.read_text())
  assert data["runs"]["tiny"]["benchmarks"]["math500"]["num_problems"] == 5
  assert matplotlib.image.imread(paths.plot).shape[0] > 100
  levels = {r.level for r in res.read_results(res.results_path(out, "math500"))}
  assert levels == {"1", "2", "3"}

  # The CLI with the same settings writes the same table (and grades in a reward pool).
  from hpt_jax import evaluate
  cli_flags(["evaluate", f"--hf_dir={hf_dir}", f"--data_dir={data_dir}", f"--output_dir={tmp_path / 'cli'}",
             "--benchmarks=math500,amc", "--run_name=tiny", "--num_samples=2", "--max_new_tokens=8",
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
