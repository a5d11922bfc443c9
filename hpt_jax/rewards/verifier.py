"""HPT's reward v6 (`entropy_math.compute_score`, PAPER.md §3) and the LUFFY-style `</think>` variant.

A response is correct when the content of its LAST `\\boxed{}`/`\\fbox{}` equals the ground truth under
any of three tests, cheapest first:
  1. mathd string normalisation (`mathd.normalize_mathd`),
  2. sympy equality after PRM800K normalisation (`sympy_grader.sympy_equal`),
  3. math-verify equality (the `is_latex_equal` step; HPT runs it because `fast=False`).
A list-valued ground truth is correct when any element matches. The result is binary.

Nothing here uses timeouts: math-verify is called with its own SIGALRM timeouts disabled
(`parsing_timeout=None`, `timeout_seconds=None`) because signals only work in the main thread. Callers
that need a time bound run these functions in `rewards.pool`, whose worker processes are killed on
overrun. A cheap guard (`looks_pathological`) keeps very long or highly repetitive answers away from
sympy and math-verify altogether.
"""

from __future__ import annotations

import enum
import logging
import zlib
from collections.abc import Sequence

from hpt_jax.rewards import extract
from hpt_jax.rewards.mathd import mathd_equal
from hpt_jax.rewards.sympy_grader import sympy_equal

# Answers longer than this never reach sympy / math-verify (HPT's is_latex_equal uses 512 too).
MAX_SYMBOLIC_CHARS = 512
# Above this length an answer must also not be highly repetitive to reach the symbolic tests.
REPETITION_CHECK_CHARS = 128
# zlib output / input below this ratio means the text is mostly repeats (normal LaTeX stays above 0.4).
MIN_COMPRESSION_RATIO = 0.25

GroundTruth = str | int | float | Sequence[str | int | float]


class Verdict(enum.Enum):
  """Why a response got its score. Only CORRECT scores 1."""
  CORRECT = "correct"
  WRONG = "wrong"
  NO_BOX = "no_box"  # no `\boxed{}` / `\fbox{}` (or an unbalanced last one).
  NO_THINK = "no_think"  # LUFFY variant: no `</think>` in the response.
  REJECTED = "rejected"  # too long / repetitive for the symbolic tests, and not string-equal.
  TIMEOUT = "timeout"  # set by the process pool only.
  ERROR = "error"  # set by the process pool only (an exception inside a grader).


class Variant(enum.Enum):
  """Which reward function: HPT v6 grades the whole response, LUFFY only the text after `</think>`.

  LUFFY_THINK is "LUFFY-style": it has LUFFY's format rule (no `</think>` -> 0, grade only what follows)
  but grades the last box there with the v6 tests. LUFFY's own reward instead runs math-verify's
  default extraction over the whole post-`</think>` text, which can also credit an unboxed answer.
  """
  HPT_V6 = "hpt_v6"
  LUFFY_THINK = "luffy_think"


def looks_pathological(answer: str) -> bool:
  """True for answers too long or too repetitive to hand to sympy / math-verify."""
  if len(answer) > MAX_SYMBOLIC_CHARS:
    return True
  if len(answer) > REPETITION_CHECK_CHARS:
    raw = answer.encode("utf-8")
    return len(zlib.compress(raw)) / len(raw) < MIN_COMPRESSION_RATIO
  return False


_MV_CONFIG = None


def _math_verify_config():
  """math-verify's box-first extraction config, built once per process (import is slow)."""
  global _MV_CONFIG
  if _MV_CONFIG is None:
    import math_verify  # noqa: PLC0415 -- heavy import, only where math-verify runs.
    # math-verify logs a warning on every call when its timeouts are off; ours come from the pool.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    _MV_CONFIG = [math_verify.LatexExtractionConfig(boxed_match_priority=0)]
  return _MV_CONFIG


def math_verify_equal(given: str, ground_truth: str) -> bool:
  """math-verify `verify(parse(\\boxed{gt}), parse(\\boxed{given}))`, no signals, first match only."""
  import math_verify  # noqa: PLC0415
  config = _math_verify_config()

  def parse(text: str):
    return math_verify.parse(
        "\\boxed{" + text + "}", extraction_config=config, fallback_mode="no_fallback",
        extraction_mode="first_match", parsing_timeout=None, raise_on_error=False)

  gold, pred = parse(ground_truth), parse(given)
  if not gold or not pred:
    return False
  return bool(math_verify.verify(gold, pred, timeout_seconds=None, raise_on_error=False))


def grade_answer(given: str, ground_truth: str) -> Verdict:
  """Grades one extracted answer against one ground-truth string (HPT v6's `grade`).

  Returns:
    CORRECT, WRONG, or REJECTED (not string-equal, and too long/repetitive for symbolic tests).
  """
  ground_truth = extract.strip_box(ground_truth)
  if mathd_equal(given, ground_truth):
    return Verdict.CORRECT
  if looks_pathological(given):
    return Verdict.REJECTED
  if sympy_equal(given, ground_truth):
    return Verdict.CORRECT
  if math_verify_equal(given, ground_truth):
    return Verdict.CORRECT
  return Verdict.WRONG


def ground_truth_list(ground_truth: GroundTruth) -> list[str]:
  """The acceptable answers as strings; a bad ground truth raises naming its type."""
  if isinstance(ground_truth, str):
    return [ground_truth]
  if isinstance(ground_truth, bool):
    raise TypeError(f"ground_truth must be a string, number or list of them, got bool {ground_truth!r}")
  if isinstance(ground_truth, (int, float)):
    return [str(ground_truth)]
  if isinstance(ground_truth, Sequence) or hasattr(ground_truth, "tolist"):
    items = ground_truth.tolist() if hasattr(ground_truth, "tolist") else list(ground_truth)
    out = []
    for item in items:
      out.extend(ground_truth_list(item))
    if not out:
      raise ValueError("ground_truth is an empty list")
    return out
  raise TypeError(f"ground_truth must be a string, number or list of them, got {type(ground_truth).__name__}")


def verdict(response: str, ground_truth: GroundTruth, *, variant: Variant = Variant.HPT_V6) -> Verdict:
  """Grades a full model response; the verdict explains the binary score (see `Verdict`).

  Args:
    response: the decoded response text.
    ground_truth: a string/number, or a list of them (correct if any matches).
    variant: HPT_V6 grades the last box of the whole response; LUFFY_THINK requires `</think>` and
      grades only the text after it.
  """
  if not isinstance(response, str):
    raise TypeError(f"response must be str, got {type(response).__name__}")
  truths = ground_truth_list(ground_truth)
  text = response
  if variant is Variant.LUFFY_THINK:
    text = extract.after_think(response)
    if text is None:
      return Verdict.NO_THINK
  answer = extract.last_boxed(text)
  if answer is None:
    return Verdict.NO_BOX
  verdicts = [grade_answer(answer, truth) for truth in truths]
  if Verdict.CORRECT in verdicts:
    return Verdict.CORRECT
  return Verdict.REJECTED if Verdict.REJECTED in verdicts else Verdict.WRONG


def compute_score(response: str, ground_truth: GroundTruth, *, variant: Variant = Variant.HPT_V6) -> float:
  """Binary reward, 1.0 when `verdict(...)` is CORRECT, else 0.0 (the training reward)."""
  return 1.0 if verdict(response, ground_truth, variant=variant) is Verdict.CORRECT else 0.0
