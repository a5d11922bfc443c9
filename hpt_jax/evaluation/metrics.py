"""avg@k and the unbiased pass@k estimator, per problem, per benchmark, averaged.

The paper (arXiv 2509.04419, §4) reports "pass@1 with sampling": avg@32 on AIME24/AIME25/AMC and avg@1
elsewhere, i.e. the mean over problems of the fraction of correct samples. Fig. 2 plots pass@k for growing k
following Yue et al. (2025), which uses the unbiased estimator of Chen et al. (2021, Codex):

  pass@k = 1 − C(n − c, k) / C(n, k)

for a problem with n samples of which c are correct. The binomial ratio is evaluated as the product
  C(n − c, k) / C(n, k) = Π_{j=0}^{k−1} (n − c − j) / (n − j),
every factor in [0, 1], so no factorials overflow and no catastrophic cancellation occurs; a running
product gives every k = 1..n in O(n). Metrics live on the host (NumPy float64): they see a few thousand
numbers, and float32 would lose digits on n = 1024.

Letters: P problems, n samples per problem.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import chex
import numpy as np


def _check_counts(num_samples: np.ndarray, num_correct: np.ndarray) -> None:
  chex.assert_rank([num_samples, num_correct], 1)
  chex.assert_equal_shape([num_samples, num_correct])
  if np.any(num_samples < 1):
    raise ValueError(f"num_samples must be >= 1 for every problem, got {num_samples.tolist()}")
  if np.any(num_correct < 0) or np.any(num_correct > num_samples):
    bad = np.flatnonzero((num_correct < 0) | (num_correct > num_samples))
    raise ValueError(f"num_correct must lie in [0, num_samples]; bad problems at indices {bad.tolist()}")


def pass_at_k(*, num_samples: np.ndarray, num_correct: np.ndarray, k: int) -> np.ndarray:
  """Unbiased pass@k of each problem.

  Args:
    num_samples: [P] int, n samples drawn for each problem (may differ between problems).
    num_correct: [P] int, c correct samples among them.
    k: 1 <= k <= min(n).

  Returns:
    [P] float64, 1 − C(n−c, k)/C(n, k) per problem.
  """
  n = np.asarray(num_samples, dtype=np.int64)
  c = np.asarray(num_correct, dtype=np.int64)
  _check_counts(n, c)
  if not 1 <= k <= int(n.min()):
    raise ValueError(f"k must lie in [1, min(num_samples)={int(n.min())}], got k={k}")
  j = np.arange(k)[None, :]  # [1, k]
  # Factors (n−c−j)/(n−j); once n−c−j hits 0 the whole product is 0 (a correct sample is unavoidable).
  factors = np.clip((n[:, None] - c[:, None] - j) / (n[:, None] - j), 0.0, 1.0)  # [P, k]
  return 1.0 - np.prod(factors, axis=1)


def pass_at_k_curve(*, num_samples: int, num_correct: np.ndarray) -> np.ndarray:
  """pass@k of each problem for every k = 1..n (all problems share n).

  Args:
    num_samples: n, samples per problem.
    num_correct: [P] int, correct samples per problem.

  Returns:
    [P, n] float64; column k−1 holds pass@k.
  """
  c = np.asarray(num_correct, dtype=np.int64)
  _check_counts(np.full_like(c, num_samples), c)
  j = np.arange(num_samples)[None, :]  # [1, n]
  factors = np.clip((num_samples - c[:, None] - j) / (num_samples - j), 0.0, 1.0)  # [P, n]
  return 1.0 - np.cumprod(factors, axis=1)


def avg_at_k(correct: np.ndarray) -> np.ndarray:
  """avg@k of each problem: the fraction of its k samples that are correct (equals pass@1).

  Args:
    correct: [P, k] bool or {0, 1}, per-sample correctness.

  Returns:
    [P] float64.
  """
  correct = np.asarray(correct)
  chex.assert_rank(correct, 2)
  if correct.shape[1] < 1:
    raise ValueError("avg@k needs at least one sample per problem")
  return correct.astype(np.float64).mean(axis=1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class BenchmarkScore:
  """Scores of one run on one benchmark (values are fractions in [0, 1]).

  Attributes:
    benchmark: benchmark name.
    num_problems: P.
    num_samples: n shared by the problems (the minimum if they differ).
    avg_at_k: mean over problems of avg@n (= mean unbiased pass@1), the paper's headline number.
    pass_at_k: {k: mean over problems of pass@k} for every k = 1..num_samples.
  """
  benchmark: str
  num_problems: int
  num_samples: int
  avg_at_k: float
  pass_at_k: Mapping[int, float]

  def to_json(self) -> dict:
    return {
        "benchmark": self.benchmark, "num_problems": self.num_problems, "num_samples": self.num_samples,
        "avg_at_k": self.avg_at_k, "pass_at_k": {str(k): v for k, v in self.pass_at_k.items()},
    }

  @classmethod
  def from_json(cls, row: Mapping) -> "BenchmarkScore":
    return cls(benchmark=row["benchmark"], num_problems=int(row["num_problems"]),
               num_samples=int(row["num_samples"]), avg_at_k=float(row["avg_at_k"]),
               pass_at_k={int(k): float(v) for k, v in row["pass_at_k"].items()})


def score_benchmark(*, benchmark: str, num_samples: Sequence[int],
                    num_correct: Sequence[int]) -> BenchmarkScore:
  """Aggregates per-problem counts into a `BenchmarkScore`.

  Args:
    benchmark: name stored in the result.
    num_samples: [P] samples per problem.
    num_correct: [P] correct samples per problem.

  Returns:
    The benchmark's avg@n and pass@k for k = 1..min(n), each a mean over problems.
  """
  n = np.asarray(num_samples, dtype=np.int64)
  c = np.asarray(num_correct, dtype=np.int64)
  if n.size == 0:
    raise ValueError(f"benchmark {benchmark!r} has no problems to score")
  _check_counts(n, c)
  n_min = int(n.min())
  # One running product per distinct n keeps this O(P·n) even for n = 2048 samples (Fig. 2 scale).
  per_problem = np.empty((n.size, n_min), dtype=np.float64)  # [P, n_min]
  for n_value in np.unique(n):
    rows = n == n_value
    per_problem[rows] = pass_at_k_curve(num_samples=int(n_value), num_correct=c[rows])[:, :n_min]
  means = per_problem.mean(axis=0)
  curve = {k: float(means[k - 1]) for k in range(1, n_min + 1)}
  return BenchmarkScore(benchmark=benchmark, num_problems=int(n.size), num_samples=n_min,
                        avg_at_k=float((c / n).mean()), pass_at_k=curve)


def average_over_benchmarks(scores: Sequence[BenchmarkScore]) -> float:
  """The paper's "Avg" column: the unweighted mean of the benchmarks' avg@k.

  Each benchmark counts once whatever its size, as in Table 2 (e.g. ID Avg over six benchmarks).
  """
  if not scores:
    raise ValueError("cannot average over an empty list of benchmarks")
  return float(np.mean([s.avg_at_k for s in scores]))


def average_pass_at_k(scores: Sequence[BenchmarkScore]) -> dict[int, float]:
  """Unweighted mean over benchmarks of pass@k, for every k every benchmark has (k <= the smallest n)."""
  if not scores:
    raise ValueError("cannot average over an empty list of benchmarks")
  k_max = min(s.num_samples for s in scores)
  return {k: float(np.mean([s.pass_at_k[k] for s in scores])) for k in range(1, k_max + 1)}
