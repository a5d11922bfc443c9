"""Periodic validation during training, through the evaluation package's `Evaluator`.

The evaluator is built once with the trainer's own sampler (same buckets, so validation reuses the
compiled rollout programs) and called with the live parameters; results are never written to disk
(the run's metrics file holds them), so every validation samples afresh.

Metrics: `val/accuracy` (avg@n over the problems, the paper's headline number), `val/pass@n`, and
`val/accuracy_level_<L>` per difficulty level when the problems carry one (the built-in task does),
which the run's plots show per level.
"""

from __future__ import annotations

import collections
import pathlib
from typing import Any

import numpy as np

from hpt_jax import evaluation
from hpt_jax import sampling
from hpt_jax.data.templates import adds_special_tokens
from hpt_jax.evaluation import benchmarks as bm
from hpt_jax.evaluation.backends import SamplerBackend
from hpt_jax.evaluation.grading import RewardGrader
from hpt_jax.training.config import ValidationConfig


class Validator:
  """`validator(params, step=...) -> metrics`; a no-op returning {} when validation is off.

  Args:
    config: the validation section.
    data: the run's `TrainingData` (held-out problems, prompt template and rendering, reward pool).
    sampler: the trainer's sampler (with tokenizer).
    max_new_tokens: response cap (the training response length).
    seed: base seed of the validation samples (fixed across steps, so steps are comparable).
  """

  def __init__(self, *, config: ValidationConfig, data: Any, sampler: sampling.Sampler,
               max_new_tokens: int, seed: int):
    self.config = config
    self.job = None
    if not config.every_steps and not config.before_training:
      return
    protocol = bm.Protocol(temperature=config.temperature, top_p=1.0, max_new_tokens=max_new_tokens,
                           num_samples=config.samples_per_problem)
    if config.file is None:
      problems = data.validation_problems(config.num_problems)
      self.job = evaluation.BenchmarkJob(name="validation", problems=problems, protocol=protocol,
                                         grading=bm.Grading.MATH)
    else:
      self.job = evaluation.make_job(
          config.benchmark, pathlib.Path(config.file), limit=config.num_problems,
          temperature=protocol.temperature, top_p=protocol.top_p, max_new_tokens=max_new_tokens,
          num_samples=protocol.num_samples)
    rows = max(config.samples_per_problem, sampler.batch_multiple)
    # Validation prompts must be the training prompts: the data layer's rule decides whether the
    # tokenizer adds its special tokens (BOS for the Llama zero template), as `evaluation.build` does.
    backend = SamplerBackend(sampler, add_special_tokens=adds_special_tokens(data.template))
    self.evaluator = evaluation.Evaluator(
        backend=backend, grader=RewardGrader(pool=data.reward_pool),
        render=data.render, batch_rows=max(rows, 8 * config.samples_per_problem), seed=seed,
        progress=False)

  def __call__(self, params: Any, *, step: int) -> dict[str, float]:
    del step  # Same seed every time: validation differences come from the parameters only.
    if self.job is None:
      return {}
    results = self.evaluator.evaluate_benchmark(params, self.job)
    per_problem = np.asarray([np.mean(r.correct) for r in results])
    out = {"val/accuracy": float(per_problem.mean()),
           f"val/pass@{self.config.samples_per_problem}": float(np.mean([any(r.correct) for r in results])),
           "val/response_length_mean": float(np.mean([np.mean(r.response_lengths) for r in results]))}
    by_level = collections.defaultdict(list)
    for r, acc in zip(results, per_problem):
      if r.level is not None:
        by_level[r.level].append(acc)
    for level, values in sorted(by_level.items()):
      out[f"val/accuracy_level_{level}"] = float(np.mean(values))
    return out
