"""Benchmark: scoring 1,000 mixed answers in the reward process pool vs serially, in one run.

  python experiments/bench_rewards.py [--num_answers=1000] [--workers=2]

Prints seconds for each, their ratio, and the pool's verdict counts. The answers are the same mixed
batch the pool tests use (fractions, tuples, radicals, decimals, polynomials; a tenth wrong).
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from hpt_jax.rewards import RewardPool, score_serial  # noqa: E402
from test_rewards_pool import _mixed_answers  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--num_answers", type=int, default=1000)
  parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
  args = parser.parse_args()
  responses, truths = _mixed_answers(args.num_answers)
  start = time.perf_counter()
  serial = score_serial(responses, truths)
  serial_s = time.perf_counter() - start
  with RewardPool(num_workers=args.workers, timeout_s=5.0) as pool:
    pool.score(["\\boxed{1}"] * args.workers, ["1"] * args.workers)  # start and import the workers
    start = time.perf_counter()
    pooled = pool.score(responses, truths)
    pool_s = time.perf_counter() - start
  assert pooled.verdicts == serial.verdicts, "pool and serial verdicts differ"
  print(f"answers={args.num_answers} workers={args.workers} load={os.getloadavg()[0]:.1f}")
  print(f"serial: {serial_s:.2f} s   pool: {pool_s:.2f} s   speed-up: {serial_s / pool_s:.2f}x")
  print(f"pool verdicts: {pooled.counts()}")


if __name__ == "__main__":
  main()
