"""Math answer verification (HPT reward v6, a LUFFY `</think>` variant, letter grading) and a
process-pool batch scorer with per-answer timeouts.

Public API:
  compute_score(response, ground_truth, *, variant) -> float    binary reward of one response
  verdict(response, ground_truth, *, variant) -> Verdict        the reason behind that score
  Variant, Verdict                                              typed choices
  grade_answer(given, ground_truth) -> Verdict                  one extracted answer vs one truth
  last_boxed(text), after_think(text)                           extraction
  grade_choice(response, answer, *, choices) -> float           multiple-choice letters (GPQA, ARC-c)
  RewardPool(num_workers=, timeout_s=).score(...) -> BatchScores   batch scoring with timeouts
  score_serial(...) -> BatchScores                              same, in-process, no timeout
"""

from hpt_jax.rewards.choice import extract_choice, grade_choice
from hpt_jax.rewards.extract import after_think, last_boxed
from hpt_jax.rewards.pool import BatchScores, RewardPool, score_serial
from hpt_jax.rewards.verifier import Variant, Verdict, compute_score, grade_answer, verdict

__all__ = [
    "BatchScores", "RewardPool", "Variant", "Verdict", "after_think", "compute_score", "extract_choice",
    "grade_answer", "grade_choice", "last_boxed", "score_serial", "verdict",
]
