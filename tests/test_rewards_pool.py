"""The process-pool scorer: per-answer timeouts without signals, crash isolation, agreement with serial."""

import random
import threading
import time

import numpy as np
import pytest

from hpt_jax.rewards import RewardPool, Verdict, compute_score, score_serial

# math-verify never finishes on this power tower (measured: > 60 s); sympy's guard refuses it.
TOWER = "\\boxed{9^{9^{9^{9}}}}"


@pytest.fixture(scope="module")
def pool():
  # 3 s: generous for real answers on a loaded 2-core machine, short enough for a quick test.
  with RewardPool(num_workers=2, timeout_s=3.0) as p:
    p.score(["\\boxed{1}"] * 2, ["1"] * 2)  # warm: both workers started and imported.
    yield p


def test_timeout_answer_scores_zero_within_twice_the_timeout(pool):
  start = time.perf_counter()
  batch = pool.score([TOWER, "\\boxed{2}", "\\boxed{3}"], ["1", "2", "4"])
  elapsed = time.perf_counter() - start
  assert elapsed < 2 * pool.timeout_s, elapsed
  assert batch.verdicts == (Verdict.TIMEOUT, Verdict.CORRECT, Verdict.WRONG)
  np.testing.assert_array_equal(batch.scores, [0.0, 1.0, 0.0])
  assert batch.counts()["timeout"] == 1 and batch.metrics()["reward/timeout"] == 1.0
  # The killed worker was replaced: the pool keeps scoring.
  again = pool.score(["\\boxed{\\frac{1}{2}}"], ["0.5"])
  assert again.verdicts == (Verdict.CORRECT,)


def test_timeout_works_from_a_non_main_thread(pool):
  # SIGALRM-based timeouts raise "signal only works in main thread" here; the pool must not.
  out = {}

  def run():
    out["batch"] = pool.score([TOWER], ["1"])

  thread = threading.Thread(target=run)
  thread.start()
  thread.join(timeout=10)
  assert not thread.is_alive()
  assert out["batch"].verdicts == (Verdict.TIMEOUT,)


def test_long_repetition_is_rejected_fast(pool):
  spam = "\\boxed{" + "12345" * 10_000 + "}"  # 50 kB answer.
  start = time.perf_counter()
  batch = pool.score([spam, "x" * 50_000 + "\\boxed{7}"], ["12345", "7"])
  assert time.perf_counter() - start < pool.timeout_s
  assert batch.verdicts == (Verdict.REJECTED, Verdict.CORRECT)


def test_power_tower_scores_zero(pool):
  # sympy's guard refuses stacked exponents; math-verify compares 10^10^10 symbolically (no expansion).
  start = time.perf_counter()
  batch = pool.score(["\\boxed{10^{10^{10}}}", "\\boxed{10^{10^{10}}}"], ["1", "10^{10^{10}}"])
  assert time.perf_counter() - start < 2 * pool.timeout_s
  np.testing.assert_array_equal(batch.scores, [0.0, 1.0])


def test_worker_crash_is_an_error_not_a_dead_run(pool):
  # Kill a worker from outside while it grades the tower: its answer is an ERROR, the rest still score.
  victim = pool._workers[0].process

  def kill_soon():
    time.sleep(0.3)
    victim.kill()

  threading.Thread(target=kill_soon).start()
  batch = pool.score([TOWER, "\\boxed{5}"], ["1", "5"])
  assert batch.verdicts[0] in (Verdict.ERROR, Verdict.TIMEOUT)
  assert batch.verdicts[1] is Verdict.CORRECT


def _mixed_answers(n: int, seed: int = 0):
  """Typical batch: mostly right answers in varied forms, a tenth wrong (those run all three tests)."""
  rng = random.Random(seed)
  responses, truths = [], []
  for i in range(n):
    a, b = rng.randint(1, 99), rng.randint(2, 30)
    wrong = rng.random() < 0.1
    kind = i % 5
    if kind == 0:
      responses.append(f"so \\boxed{{\\frac{{{a}}}{{{b}}}}}")
      truths.append(f"{a + 1}/{b}" if wrong else f"{a}/{b}")
    elif kind == 1:
      responses.append(f"\\boxed{{({a}, {b})}}")
      truths.append(f"({b},{a + 1})" if wrong else f"({a},{b})")
    elif kind == 2:
      responses.append(f"\\boxed{{{a}\\sqrt{{{b}}}}}")
      truths.append(f"{a + 1}\\sqrt{{{b}}}" if wrong else f"{a}\\sqrt{{{b}}}")
    elif kind == 3:
      responses.append(f"The answer is {a}." if wrong else f"\\boxed{{{a}.0}}")
      truths.append(str(a))
    else:
      responses.append(f"\\boxed{{{a}x+{b}}}")
      truths.append(f"{a}x-{b}" if wrong else f"{b}+{a}x")
  return responses, truths


def test_pool_agrees_with_serial_on_mixed_answers(pool):
  # Speed (pool vs serial on 1,000 answers) is measured by experiments/bench_rewards.py, not by a timed
  # test: on a loaded 2-core CI machine a wall-clock comparison says more about the load than the pool.
  responses, truths = _mixed_answers(300)
  serial = score_serial(responses, truths)
  pooled = pool.score(responses, truths)
  # Same verdicts, in input order; spot-check against the single-answer API.
  assert pooled.counts()["timeout"] == 0, pooled.counts()
  assert pooled.verdicts == serial.verdicts
  for i in range(0, 300, 29):
    assert pooled.scores[i] == compute_score(responses[i], truths[i])
  assert 0 < pooled.scores.sum() < 300


def test_bad_inputs_name_the_row(pool):
  with pytest.raises(ValueError, match="differ in length"):
    pool.score(["a"], ["1", "2"])
  with pytest.raises(ValueError, match=r"ground_truths\[1\]"):
    pool.score(["a", "b"], ["1", None])
  with pytest.raises(TypeError, match=r"responses\[0\]"):
    pool.score([3], ["1"])


def test_a_worker_that_died_while_idle_is_replaced_and_its_answer_requeued():
  with RewardPool(num_workers=1, timeout_s=5.0) as p:
    p._workers[0].process.kill()
    p._workers[0].process.join()
    batch = p.score(["\\boxed{3}", "\\boxed{4}"], ["3", "5"])
    assert batch.verdicts == (Verdict.CORRECT, Verdict.WRONG)
    assert p.restarts == 1


def test_start_without_waiting_scores_like_serial_and_closes_cleanly():
  responses, truths = _mixed_answers(40)
  p = RewardPool(num_workers=2, timeout_s=5.0)
  p.start(wait=False)  # returns at once; the first score waits for the workers
  try:
    assert p.score(responses, truths).verdicts == score_serial(responses, truths).verdicts
    processes = [w.process for w in p._workers]
    assert len(processes) == 2
  finally:
    p.close()
  assert not any(x.is_alive() for x in processes)
  # Closed while still starting: the workers being forked are stopped too.
  q = RewardPool(num_workers=2, timeout_s=5.0)
  q.start(wait=False)
  q.close()
  assert q._workers == [] and q._starter is None


def test_the_trainer_process_does_not_import_the_graders():
  """sympy and math-verify load where an answer is first graded in-process, or in the pool's workers
  (its forkserver preloads them): importing the training loop does not pull them in."""
  import subprocess  # noqa: PLC0415
  import sys  # noqa: PLC0415

  code = ("import sys, hpt_jax.training.loop, hpt_jax.rewards; "
          "print(sorted(m for m in ('sympy', 'math_verify') if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
  assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr
  # ...and in-process grading still works (lazily importing them).
  assert score_serial(["\\boxed{\\frac{1}{2}}"], ["0.5"]).scores.tolist() == [1.0]
