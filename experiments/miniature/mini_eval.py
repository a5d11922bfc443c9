"""Held-out evaluation of one exported model on every difficulty level (the paper's metrics).

Samples `eval_samples` answers per held-out problem at temperature 0.6 / top-p 0.95 with the
evaluation package (its sampler backend and the training verifier), and scores avg@k (the paper's
pass@1) per level and overall. Per-problem results are written as JSONL under the run's eval
directory, so a rerun reuses them.
"""

from __future__ import annotations

import collections
import pathlib
from typing import Sequence

import numpy as np

from hpt_jax import evaluation, sampling
from hpt_jax.evaluation import build
from hpt_jax.evaluation.results import ProblemResult, read_results, results_path

BENCHMARK = "builtin"


def evaluate_export(hf_dir: pathlib.Path, *, eval_file: pathlib.Path, out_dir: pathlib.Path,
                    samples: int, prompt_len: int, response_len: int, seed: int = 42) -> list[ProblemResult]:
  """Per-problem results of the HF export `hf_dir` on the built-in held-out file (cached in out_dir)."""
  cached = results_path(out_dir, BENCHMARK)
  job = evaluation.make_job(BENCHMARK, eval_file, temperature=0.6, top_p=0.95, max_new_tokens=response_len,
                            num_samples=samples)
  if cached.exists():
    done = read_results(cached)
    if len(done) == len(job.problems):
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
