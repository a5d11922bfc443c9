"""Held-out evaluation of one exported model on every difficulty level (the paper's metrics).

Samples `eval_samples` answers per held-out problem at temperature 0.6 / top-p 0.95 with the
evaluation package (its sampler backend and the training verifier), and scores avg@k (the paper's
pass@1) per level and overall. Per-problem results are written as JSONL under the run's eval
directory, so a rerun reuses them.
"""

from __future__ import annotations

import collections
import pathlib
import random
from typing import Sequence

import numpy as np

from hpt_jax import data as data_lib
from hpt_jax import evaluation, sampling
from hpt_jax.data import arithmetic
from hpt_jax.evaluation import build
from hpt_jax.evaluation.results import ProblemResult, read_results, results_path

BENCHMARK = "builtin"


def _questions(path: pathlib.Path) -> set[str]:
  """The user questions of an OpenR1-schema parquet file."""
  import pyarrow.parquet as pq  # noqa: PLC0415
  return {row["prompt"][-1]["content"] for row in pq.read_table(path, columns=["prompt"]).to_pylist()}


def write_eval_file(path: pathlib.Path, *, levels: Sequence[int], per_level: int, extra: int,
                    train_files: Sequence[pathlib.Path], task_seed: int = 0) -> pathlib.Path:
  """The held-out file: the task's held-out problems, plus `extra` more for each level >= 2.

  The first `per_level` problems of each level are the built-in task's own held-out set (what training
  excludes and validates on; seed `task_seed`). Level 1 has only 100 problems, so it gets no extra;
  the extra problems of the longer levels are distinct, new, and absent from every file in
  `train_files` (checked by question), so no run has trained on any evaluated problem.
  """
  seen = set().union(*(_questions(f) for f in train_files))
  problems: list[arithmetic.Problem] = []
  for level in levels:
    held = arithmetic.generate_distinct(seed=task_seed, level=level, count=per_level)
    problems += held
    seen |= {p.question for p in held}
    want = len(problems) + (extra if level >= 2 else 0)
    rng = random.Random(f"miniature-extra-heldout-{level}")
    low, high = 10 ** (level - 1), 10 ** level - 1
    for _ in range(1000 * max(extra, 1)):  # bounded: a level-2 space of 8,100 problems cannot run dry
      if len(problems) >= want:
        break
      p = arithmetic.make_problem(rng.randint(low, high), rng.randint(low, high), level=level)
      if p.question not in seen:
        seen.add(p.question)
        problems.append(p)
    if len(problems) < want:
      raise ValueError(f"level {level}: found only {len(problems) - want + extra} of {extra} unseen problems")
  rows = [arithmetic.to_openr1_row(p, index=i, split="test") for i, p in enumerate(problems)]
  return data_lib.write_openr1(rows, path)


def _finished(out_dir: pathlib.Path, *, eval_file: pathlib.Path, samples: int, response_len: int):
  """(the complete cached results or None, the evaluation job)."""
  job = evaluation.make_job(BENCHMARK, eval_file, temperature=0.6, top_p=0.95, max_new_tokens=response_len,
                            num_samples=samples)
  cached = results_path(out_dir, BENCHMARK)
  done = read_results(cached) if cached.exists() else []
  return (done if len(done) == len(job.problems) else None), job


def finished_results(out_dir: pathlib.Path, *, eval_file: pathlib.Path, samples: int,
                     response_len: int) -> list[ProblemResult] | None:
  """The cached per-problem results if the evaluation in `out_dir` is complete, else None."""
  return _finished(out_dir, eval_file=eval_file, samples=samples, response_len=response_len)[0]


def evaluate_export(hf_dir: pathlib.Path, *, eval_file: pathlib.Path, out_dir: pathlib.Path,
                    samples: int, prompt_len: int, response_len: int, seed: int = 42) -> list[ProblemResult]:
  """Per-problem results of the HF export `hf_dir` on the built-in held-out file (cached in out_dir)."""
  done, job = _finished(out_dir, eval_file=eval_file, samples=samples, response_len=response_len)
  if done is not None:
    return done
  loaded = build.load_hf_model(hf_dir)
  evaluator = build.build_evaluator(
      loaded, prompt_style=build.PromptStyle.CHAT,
      buckets=sampling.Buckets(prompt=(prompt_len,), response=(response_len,)),
      batch_rows=32 * samples, seed=seed, progress=False)
  return evaluator.evaluate_benchmark(loaded.params, job, output_dir=out_dir)


def level_scores(results: Sequence[ProblemResult]) -> dict[str, float]:
  """avg@k per level ("1", "2", ...) and "all": the mean over problems of the fraction correct."""
  by_level = collections.defaultdict(list)
  for r in results:
    frac = r.num_correct / r.num_samples
    by_level[str(r.level)].append(frac)
    by_level["all"].append(frac)
  return {k: float(np.mean(v)) for k, v in sorted(by_level.items())}
