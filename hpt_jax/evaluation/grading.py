"""The evaluator's real `Grader`: the training verifier for math, option letters for multiple choice.

Math answers go through the same reward function as training (`hpt_jax.rewards`, HPT v6 by default),
scored by a `RewardPool` when one is given: its worker processes bound every answer's grading time, so a
pathological response scores 0 instead of hanging the evaluation. The trainer passes its own pool; the
CLI opens one. Without a pool, answers are scored serially in-process (trusted inputs, tests).
Multiple-choice letters are a regex match and are graded in-process.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Protocol

from hpt_jax.evaluation import benchmarks as bm
from hpt_jax.rewards import choice
from hpt_jax.rewards import pool as pool_lib
from hpt_jax.rewards import verifier


class Scorer(Protocol):
  """What `RewardGrader` needs of `rewards.RewardPool`."""

  def score(self, responses: Sequence[str], ground_truths: Sequence[verifier.GroundTruth], *,
            variant: verifier.Variant = ...) -> pool_lib.BatchScores:
    ...


class RewardGrader:
  """`Grader`: math through the training verifier (optionally in a pool), letters for choices.

  Args:
    pool: scores math answers with a timeout; None scores serially in this process.
    variant: the math reward variant (HPT v6; LUFFY grades only the text after `</think>`).
  """

  def __init__(self, *, pool: Scorer | None = None, variant: verifier.Variant = verifier.Variant.HPT_V6):
    self.pool = pool
    self.variant = variant

  def __call__(self, responses: Sequence[str], answers: Sequence[str | tuple[str, ...]], *,
               grading: bm.Grading) -> list[bool]:
    if len(responses) != len(answers):
      raise ValueError(f"RewardGrader: {len(responses)} responses but {len(answers)} answers")
    return _GRADERS[grading](self, responses, answers)

  def _math(self, responses: Sequence[str], answers: Sequence[str | tuple[str, ...]]) -> list[bool]:
    truths = [list(a) if isinstance(a, tuple) else a for a in answers]
    if self.pool is None:
      batch = pool_lib.score_serial(responses, truths, variant=self.variant)
    else:
      batch = self.pool.score(responses, truths, variant=self.variant)
    return [bool(s == 1.0) for s in batch.scores]

  def _choice(self, responses: Sequence[str], answers: Sequence[str | tuple[str, ...]]) -> list[bool]:
    # Any letter counts as a pick; a pick outside the question's options is simply wrong.
    return [choice.grade_choice(r, a, choices=string.ascii_uppercase) == 1.0
            for r, a in zip(responses, answers)]


_GRADERS = {bm.Grading.MATH: RewardGrader._math, bm.Grading.CHOICE: RewardGrader._choice}
