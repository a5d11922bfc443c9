"""The resumable evaluator: problems → prompts → n samples each → grades → per-problem results → scores.

It is written against three small interfaces so the same object serves `python -m hpt_jax.evaluate`
and the trainer's periodic validation, and so tests can count what it does:
  - `render(question) -> prompt text` (the data layer's chat template),
  - a `Backend` that measures prompts and samples completions (`backends.SamplerBackend` wraps the
    jitted sampler; the parameters are passed per call so the trainer hands in its live arrays),
  - a `Grader` that scores responses (`backends.RewardGrader`: the training verifier, or letters).

Shapes stay static so the sampler compiles a handful of programs, not one per batch: problems are sorted
into prompt-length buckets, each call carries exactly `batch_rows // n` prompts (a short last batch is
padded with repeats of its last prompt, whose outputs are dropped), and the protocol fixes n, the
response bucket and the strategy. Reusing the evaluator with the same protocol hits the jit cache.

Resume: with an output directory, every finished problem is appended to `<benchmark>.problems.jsonl`
right after grading; a rerun reads that file and samples only the problems not in it. Each problem's
prompt id is its row index in the benchmark file, and the sampler derives every row's key from
(seed, prompt id, sample index) -- the seed being the base seed offset by a hash of the benchmark name --
so a resumed run draws the same samples an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol as TypingProtocol

import tqdm

from hpt_jax.evaluation import benchmarks as bm
from hpt_jax.evaluation import metrics
from hpt_jax.evaluation import report
from hpt_jax.evaluation import results as results_lib


@dataclasses.dataclass(frozen=True, kw_only=True)
class Completion:
  """One sampled response: decoded text, length in tokens, and whether it hit max_new_tokens."""
  text: str
  length: int
  truncated: bool


class Backend(TypingProtocol):
  """Samples completions; implemented by `backends.SamplerBackend` and by test fakes."""

  def prompt_bucket(self, prompt: str) -> int:
    """The static prompt length `prompt` would be padded to (batches never mix buckets)."""
    ...

  def generate(self, params: Any, prompts: Sequence[str], *, protocol: bm.Protocol,
               prompt_ids: Sequence[int], seed: int) -> list[list[Completion]]:
    """[len(prompts)][protocol.num_samples] completions; row keys from (seed, prompt id, sample)."""
    ...


class Grader(TypingProtocol):
  """Scores responses against ground truths under a grading rule; one bool per response."""

  def __call__(self, responses: Sequence[str], answers: Sequence[str | tuple[str, ...]], *,
               grading: bm.Grading) -> list[bool]:
    ...


@dataclasses.dataclass(frozen=True, kw_only=True)
class BenchmarkJob:
  """One benchmark to evaluate: its problems (in file order) and the protocol to sample them with."""
  name: str
  problems: Sequence[bm.Problem]
  protocol: bm.Protocol
  grading: bm.Grading


def make_job(name: str, path: str | pathlib.Path, *, limit: int | None = None,
             **protocol_overrides: Any) -> BenchmarkJob:
  """Loads a benchmark file and pairs it with the paper's protocol, minus any overrides (None = keep)."""
  spec = bm.get_benchmark(name)
  return BenchmarkJob(name=name, problems=bm.load_benchmark(name, path, limit=limit),
                      protocol=spec.protocol.override(**protocol_overrides), grading=spec.grading)


class Evaluator:
  """Evaluates parameters on benchmark jobs (see the module docstring).

  Args:
    backend: samples completions.
    grader: scores them.
    render: question text -> prompt text (chat template applied).
    batch_rows: sampled rows per backend call (prompts per call = max(1, batch_rows // n)).
    seed: base seed (DeepMath uses 42); each benchmark samples with it offset by a hash of its name.
    progress: show a progress bar per benchmark.
  """

  def __init__(self, *, backend: Backend, grader: Grader, render: Callable[[str], str],
               batch_rows: int = 64, seed: int = 42, progress: bool = True):
    if batch_rows < 1:
      raise ValueError(f"Evaluator.batch_rows must be >= 1, got {batch_rows}")
    self.backend = backend
    self.grader = grader
    self.render = render
    self.batch_rows = batch_rows
    self.seed = seed
    self.progress = progress

  def _benchmark_seed(self, name: str) -> int:
    # Prompt ids are row indices, so without this row 0 of every benchmark would share one noise stream.
    return (self.seed + zlib.crc32(name.encode())) % (2**31 - 1)

  def _batches(self, job: BenchmarkJob, pending: Sequence[int]) -> list[list[int]]:
    """Problem indices grouped by prompt bucket, chunked to the fixed prompts-per-call."""
    per_call = max(1, self.batch_rows // job.protocol.num_samples)
    by_bucket: dict[int, list[int]] = {}
    for i in pending:
      try:
        bucket = self.backend.prompt_bucket(self.render(job.problems[i].question))
      except ValueError as e:  # e.g. a prompt longer than the largest bucket
        raise ValueError(f"{job.name}: problem {job.problems[i].problem_id!r}: {e}") from None
      by_bucket.setdefault(bucket, []).append(i)
    return [idx[s:s + per_call] for _, idx in sorted(by_bucket.items()) for s in range(0, len(idx), per_call)]

  def _run_batch(self, params: Any, job: BenchmarkJob, batch: list[int]) -> list[results_lib.ProblemResult]:
    per_call = max(1, self.batch_rows // job.protocol.num_samples)
    padded = batch + [batch[-1]] * (per_call - len(batch))  # fixed shape: repeats, dropped below
    prompts = [self.render(job.problems[i].question) for i in padded]
    completions = self.backend.generate(params, prompts, protocol=job.protocol, prompt_ids=padded,
                                        seed=self._benchmark_seed(job.name))[:len(batch)]
    n = job.protocol.num_samples
    if len(completions) != len(batch) or any(len(c) != n for c in completions):
      raise RuntimeError(f"backend returned {[len(c) for c in completions]} completions for "
                         f"{len(batch)} prompts x {n} samples")
    flat = [c for per_problem in completions for c in per_problem]
    answers = [job.problems[i].answer for i in batch for _ in range(n)]
    correct = self.grader([c.text for c in flat], answers, grading=job.grading)
    out = []
    for j, i in enumerate(batch):
      p, cs = job.problems[i], completions[j]
      out.append(results_lib.ProblemResult(
          benchmark=job.name, problem_id=p.problem_id, level=p.level, answer=p.answer,
          correct=tuple(bool(x) for x in correct[j * n:(j + 1) * n]),
          responses=tuple(c.text for c in cs), response_lengths=tuple(c.length for c in cs),
          truncated=tuple(c.truncated for c in cs)))
    return out

  def evaluate_benchmark(self, params: Any, job: BenchmarkJob, *,
                         output_dir: str | pathlib.Path | None = None) -> list[results_lib.ProblemResult]:
    """Per-problem results of one benchmark in file order, resuming from `output_dir` if given."""
    writer = None
    done: dict[str, results_lib.ProblemResult] = {}
    if output_dir is not None:
      writer = results_lib.ResultWriter(output_dir, job.name, job.protocol)  # cuts a torn last line
      ids = {p.problem_id for p in job.problems}
      for r in results_lib.read_results(writer.path):
        if r.problem_id not in ids:
          writer.close()
          raise ValueError(f"{writer.path} holds problem {r.problem_id!r}, which is not in benchmark "
                           f"{job.name!r}; use another output directory")
        done[r.problem_id] = r
      if done:
        logging.info("%s: resuming, %d of %d problems already done", job.name, len(done), len(job.problems))
    pending = [i for i, p in enumerate(job.problems) if p.problem_id not in done]
    try:
      with tqdm.tqdm(total=len(job.problems), initial=len(done), desc=job.name, unit="problem",
                     disable=not self.progress) as bar:
        for batch in self._batches(job, pending):
          for r in self._run_batch(params, job, batch):
            done[r.problem_id] = r
            if writer is not None:
              writer.write(r)
          bar.update(len(batch))
    finally:
      if writer is not None:
        writer.close()
    return [done[p.problem_id] for p in job.problems]

  def evaluate(self, params: Any, jobs: Sequence[BenchmarkJob], *,
               output_dir: str | pathlib.Path | None = None) -> dict[str, metrics.BenchmarkScore]:
    """Scores of each job (avg@n and pass@k for k = 1..n), resuming from `output_dir` if given."""
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
      raise ValueError(f"benchmark listed twice in {names}")
    return {job.name: results_lib.score_results(job.name, self.evaluate_benchmark(
        params, job, output_dir=output_dir)) for job in jobs}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReportPaths:
  """Where `write_report` put things."""
  table_md: pathlib.Path
  table_json: pathlib.Path
  plot: pathlib.Path
  results_dir: pathlib.Path


def write_report(scores: Mapping[str, metrics.BenchmarkScore], output_dir: str | pathlib.Path, *,
                 run_name: str) -> ReportPaths:
  """Writes the Table-2 Markdown + JSON and the pass@k plot of one run next to its per-problem files."""
  output_dir = pathlib.Path(output_dir)
  md, js = report.write_results_table({run_name: scores}, output_dir)
  plot = report.plot_pass_at_k({run_name: scores}, output_dir / "pass_at_k.png")
  return ReportPaths(table_md=md, table_json=js, plot=plot, results_dir=output_dir)
