"""The real Grader against hand-checked verdicts (math via the training verifier, letters for choices)."""

import pytest

from hpt_jax.evaluation import benchmarks as bm
from hpt_jax.evaluation import grading
from hpt_jax.rewards import pool as pool_lib


@pytest.mark.parametrize("use_pool", [False, True])
def test_reward_grader_math_and_choice(use_pool):
  if use_pool:
    with pool_lib.RewardPool(num_workers=1, timeout_s=10.0) as pool:
      _check(grading.RewardGrader(pool=pool))
  else:
    _check(grading.RewardGrader())


def _check(grader):
  math_cases = [("so \\boxed{\\frac{1}{2}}", "0.5", True), ("\\boxed{3}", ("2", "3"), True),
                ("the answer is 1", "1", False), ("\\boxed{7}", "8", False)]
  assert grader([r for r, _, _ in math_cases], [a for _, a, _ in math_cases],
                grading=bm.Grading.MATH) == [e for _, _, e in math_cases]
  choice_cases = [("The answer is (B).", "B", True), ("\\boxed{C}", "B", False), ("\\boxed{E}", "E", True),
                  ("no letter here", "A", False)]
  assert grader([r for r, _, _ in choice_cases], [a for _, a, _ in choice_cases],
                grading=bm.Grading.CHOICE) == [e for _, _, e in choice_cases]
  with pytest.raises(ValueError, match="2 responses but 1 answers"):
    grader(["a", "b"], ["1"], grading=bm.Grading.MATH)
