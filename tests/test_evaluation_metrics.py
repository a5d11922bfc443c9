"""pass@k / avg@k against the closed form (math.comb) and brute-force subset enumeration."""

import itertools
import math

import numpy as np
import pytest

from hpt_jax.evaluation import metrics


def _closed_form(n, c, k):
  return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def _brute_force(correct, k):
  # pass@k as defined: the probability that a uniformly drawn k-subset holds at least one correct sample.
  subsets = list(itertools.combinations(range(len(correct)), k))
  return sum(any(correct[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_matches_closed_form_and_brute_force(n):
  rng = np.random.default_rng(n)
  samples = rng.random((n + 1, n)) < 0.4
  samples[0] = False
  samples[-1] = True  # the all-wrong and all-right extremes
  counts = samples.sum(axis=1)
  curve = metrics.pass_at_k_curve(num_samples=n, num_correct=counts)
  assert curve.shape == (n + 1, n)
  for k in range(1, n + 1):
    single = metrics.pass_at_k(num_samples=np.full(n + 1, n), num_correct=counts, k=k)
    for p in range(n + 1):
      expected = _closed_form(n, int(counts[p]), k)
      assert single[p] == pytest.approx(expected, abs=1e-12)
      assert curve[p, k - 1] == pytest.approx(expected, abs=1e-12)
      assert curve[p, k - 1] == pytest.approx(_brute_force(samples[p], k), abs=1e-12)


def test_avg_at_k_equals_pass_at_1():
  rng = np.random.default_rng(0)
  samples = rng.random((20, 32)) < 0.3
  avg = metrics.avg_at_k(samples)
  np.testing.assert_allclose(avg, samples.sum(1) / 32, rtol=0, atol=1e-15)
  p1 = metrics.pass_at_k(num_samples=np.full(20, 32), num_correct=samples.sum(1), k=1)
  np.testing.assert_allclose(avg, p1, rtol=0, atol=1e-12)


def test_large_n_is_stable():
  # C(2048, 1024) overflows float64; the product form must still match exact rational arithmetic.
  from fractions import Fraction
  n, c, k = 2048, 3, 1024
  exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
  got = metrics.pass_at_k(num_samples=np.array([n]), num_correct=np.array([c]), k=k)[0]
  assert got == pytest.approx(float(exact), rel=1e-12)
  curve = metrics.pass_at_k_curve(num_samples=n, num_correct=np.array([c]))
  assert curve[0, k - 1] == pytest.approx(float(exact), rel=1e-12)
  assert np.all(np.diff(curve[0]) >= -1e-15)  # pass@k never decreases in k


def test_score_benchmark_mixed_n_and_average():
  n = [4, 4, 6]
  c = [0, 2, 3]
  score = metrics.score_benchmark(benchmark="toy", num_samples=n, num_correct=c)
  assert score.num_samples == 4 and score.num_problems == 3
  assert score.avg_at_k == pytest.approx((0 + 0.5 + 0.5) / 3)
  for k in range(1, 5):
    expected = np.mean([_closed_form(ni, ci, k) for ni, ci in zip(n, c)])
    assert score.pass_at_k[k] == pytest.approx(expected, abs=1e-12)
  assert metrics.BenchmarkScore.from_json(score.to_json()) == score
  other = metrics.score_benchmark(benchmark="b", num_samples=[1, 1], num_correct=[1, 0])
  assert metrics.average_over_benchmarks([score, other]) == pytest.approx((score.avg_at_k + 0.5) / 2)
  # Averaged pass@k only exists for k every benchmark has (other has n = 1).
  assert metrics.average_pass_at_k([score, other]) == {1: pytest.approx((score.pass_at_k[1] + 0.5) / 2)}


def test_bad_counts_are_refused():
  with pytest.raises(ValueError, match="num_correct"):
    metrics.pass_at_k(num_samples=np.array([2, 2]), num_correct=np.array([1, 3]), k=1)
  with pytest.raises(ValueError, match="k must"):
    metrics.pass_at_k(num_samples=np.array([2]), num_correct=np.array([1]), k=3)
  with pytest.raises(ValueError, match="no problems"):
    metrics.score_benchmark(benchmark="empty", num_samples=[], num_correct=[])
