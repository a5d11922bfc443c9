"""The evaluator's batching, grading, resume and reports, with a deterministic fake backend.

The fake backend "solves" `a+b` questions: its answer for (prompt id, sample) is right unless
hash-free arithmetic says otherwise, so expected correctness is computable independently here.
"""

import json
import re
import zlib

import pytest

from hpt_jax.evaluation import benchmarks as bm
from hpt_jax.evaluation import evaluator as ev
from hpt_jax.evaluation import metrics
from hpt_jax.evaluation import results as res


def _fake_correct(prompt_id, sample, seed):
  # Independent of batch composition, like the sampler's per-row keys.
  return (prompt_id * 7 + sample * 3 + seed) % 4 != 0


class FakeBackend:
  def __init__(self, crash_after_calls=None):
    self.calls = []  # (number of prompts, bucket of each prompt, prompt ids)
    self.seeds = set()
    self.crash_after_calls = crash_after_calls

  def prompt_bucket(self, prompt):
    return 16 if len(prompt) <= 16 else 64

  def generate(self, params, prompts, *, protocol, prompt_ids, seed):
    assert params == "params"
    if self.crash_after_calls is not None and len(self.calls) >= self.crash_after_calls:
      raise KeyboardInterrupt  # an interrupt mid-benchmark
    self.calls.append((len(prompts), {self.prompt_bucket(p) for p in prompts}, list(prompt_ids)))
    self.seeds.add(seed)
    out = []
    for prompt, pid in zip(prompts, prompt_ids):
      a, b = map(int, re.findall(r"\d+", prompt)[:2])
      row = []
      for s in range(protocol.num_samples):
        value = a + b if _fake_correct(pid, s, seed) else a + b + 1
        row.append(ev.Completion(text=f"so \\boxed{{{value}}}", length=5 + s, truncated=s == 0))
      out.append(row)
    return out


def fake_grader(responses, answers, *, grading):
  assert grading is bm.Grading.MATH
  return [re.search(r"\\boxed\{(.*)\}", r).group(1) == a for r, a in zip(responses, answers)]


def _write_bench(tmp_path, count=11):
  rows = []
  for i in range(count):
    # Two prompt-length buckets: short and long questions interleaved.
    q = f"{i}+{i + 1}=?" if i % 3 else f"Please compute {i} plus {i + 1} carefully=?"
    rows.append({"problem": q, "answer": str(2 * i + 1), "unique_id": f"p{i}", "level": 1 + i % 2})
  path = tmp_path / "math500.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


def _evaluator(backend):
  return ev.Evaluator(backend=backend, grader=fake_grader, render=lambda q: f"Q:{q}", batch_rows=6,
                      seed=42, progress=False)


def test_scores_batching_and_report(tmp_path):
  job = ev.make_job("math500", _write_bench(tmp_path), num_samples=3, temperature=None)
  assert job.protocol == bm.Protocol(num_samples=3) and job.grading is bm.Grading.MATH
  backend = FakeBackend()
  scores = _evaluator(backend).evaluate("params", [job], output_dir=tmp_path / "out")
  # Every call carries batch_rows // n = 2 prompts, all from one bucket.
  assert all(n == 2 and len(buckets) == 1 for n, buckets, _ in backend.calls)
  sampled = sorted({pid for _, _, ids in backend.calls for pid in ids})
  assert sampled == list(range(11))
  # Each benchmark samples with the base seed offset by a hash of its name (independent noise per set).
  seed = (42 + zlib.crc32(b"math500")) % (2**31 - 1)
  assert backend.seeds == {seed}
  counts = [sum(_fake_correct(i, s, seed) for s in range(3)) for i in range(11)]
  expected = metrics.score_benchmark(benchmark="math500", num_samples=[3] * 11, num_correct=counts)
  assert scores["math500"] == expected
  stored = res.read_results(res.results_path(tmp_path / "out", "math500"))
  assert sorted(r.problem_id for r in stored) == sorted(f"p{i}" for i in range(11))
  paths = ev.write_report(scores, tmp_path / "out", run_name="tiny")
  assert f"| tiny | {100 * expected.avg_at_k:.1f} |" in paths.table_md.read_text()
  assert json.loads(paths.table_json.read_text())["runs"]["tiny"]["averages"]["ID Avg"] == pytest.approx(
      expected.avg_at_k)
  assert paths.plot.stat().st_size > 1000


def test_interrupted_run_resumes_and_matches_uninterrupted(tmp_path):
  job = ev.make_job("math500", _write_bench(tmp_path), num_samples=3)
  reference = _evaluator(FakeBackend()).evaluate_benchmark("params", job)

  crashing = FakeBackend(crash_after_calls=3)
  with pytest.raises(KeyboardInterrupt):
    _evaluator(crashing).evaluate("params", [job], output_dir=tmp_path / "out")
  finished = {pid for _, _, ids in crashing.calls for pid in ids}
  # A torn line from a crash mid-write must not count as finished.
  path = res.results_path(tmp_path / "out", "math500")
  assert len(res.read_results(path)) == len(finished) == 6
  with path.open("a") as f:
    f.write('{"benchmark": "math500", "problem_id": "p10", "lev')

  resumed = FakeBackend()
  results = _evaluator(resumed).evaluate_benchmark("params", job, output_dir=tmp_path / "out")
  resampled = [pid for _, _, ids in resumed.calls for pid in ids]
  assert set(resampled) == set(range(11)) - finished  # finished problems are skipped
  # Short prompts are rows 1,2,4,5,7,8,10 and long ones 0,3,6,9; the crash came after [1,2],[4,5],[7,8],
  # so the rerun samples [10] (short bucket), then [0,3] and [6,9] (long bucket).
  assert finished == {1, 2, 4, 5, 7, 8}
  assert [ids[:n] for n, _, ids in resumed.calls] == [[10, 10], [0, 3], [6, 9]]
  assert results == reference
  # Rerunning a complete benchmark samples nothing.
  idle = FakeBackend()
  assert _evaluator(idle).evaluate_benchmark("params", job, output_dir=tmp_path / "out") == reference
  assert idle.calls == []
  # A different protocol in the same directory is refused, not mixed.
  other = ev.make_job("math500", _write_bench(tmp_path), num_samples=2)
  with pytest.raises(ValueError, match="sampled with protocol"):
    _evaluator(FakeBackend()).evaluate_benchmark("params", other, output_dir=tmp_path / "out")


def test_prompt_too_long_names_the_problem(tmp_path):
  class Bounded(FakeBackend):
    def prompt_bucket(self, prompt):
      if len(prompt) > 30:
        raise ValueError(f"no bucket holds length {len(prompt)}")
      return 16

  job = ev.make_job("math500", _write_bench(tmp_path), num_samples=1)
  with pytest.raises(ValueError, match=r"math500: problem 'p0': no bucket holds length"):
    _evaluator(Bounded()).evaluate_benchmark("params", job)
