"""Hendrycks-MATH ("mathd") string normalisation, the first and cheapest test of the HPT v6 grader.

Two answers are equal under this test when their normalised strings are identical. The steps follow
the published description of `_strip_string` from the MATH benchmark (Hendrycks et al. 2021): strip
layout-only LaTeX (`\\left`, `\\!`, `\\$`, degree marks, trailing `\\text{ unit}`), canonicalise
fraction spellings (`\\dfrac`, `\\tfrac`, `\\frac12`, `a/b`), drop a short `x =` prefix and all spaces.
"""

from __future__ import annotations

import re

from hpt_jax.rewards.extract import matching_brace

_INT_RE = re.compile(r"-?\d+")


def _braced_fracs(s: str) -> str:
  r"""`\frac12`, `\frac1{2}`, `\frac{1}2` → `\frac{1}{2}`; fully braced fractions are kept."""
  parts = s.split("\\frac")
  out = parts[0]
  for part in parts[1:]:
    out += "\\frac"
    if not part:
      continue
    if part[0] == "{":
      # `\frac{3}4`: braced numerator, bare one-character denominator.
      close = matching_brace(part, 0)
      if 0 < close < len(part) - 1 and part[close + 1] not in "{ ":
        part = part[:close + 1] + "{" + part[close + 1] + "}" + part[close + 2:]
      out += part
      continue
    if len(part) < 2:  # `\frac1` with no denominator: malformed, keep the text as it is.
      out += part
      continue
    numer, rest = part[0], part[1:]
    if rest[0] == "{":
      out += "{" + numer + "}" + rest
    else:
      out += "{" + numer + "}{" + rest[0] + "}" + rest[1:]
  return out


def _slash_to_frac(s: str) -> str:
  r"""`3/4` → `\frac{3}{4}` when both sides are plain integers (no sign on the denominator)."""
  pieces = s.split("/")
  if len(pieces) != 2:
    return s
  numer, denom = pieces
  if _INT_RE.fullmatch(numer) and re.fullmatch(r"\d+", denom):
    return "\\frac{" + numer + "}{" + denom + "}"
  return s


def _braced_sqrt(s: str) -> str:
  r"""`\sqrt3` → `\sqrt{3}` (the first character after `\sqrt` becomes the argument)."""
  parts = s.split("\\sqrt")
  out = parts[0]
  for part in parts[1:]:
    if part and part[0] != "{":
      out += "\\sqrt{" + part[0] + "}" + part[1:]
    else:
      out += "\\sqrt" + part
  return out


def _drop_trailing_text_unit(s: str) -> str:
  r"""`5 \text{ cm}` → `5`: a `\text{ ` with a leading space marks a unit after the value."""
  marker = "\\text{ "
  if marker in s:
    return s.split(marker)[0]
  return s


def normalize_mathd(answer: str) -> str:
  """Normalises an answer string the way Hendrycks' MATH grader does (pure string rewriting).

  Args:
    answer: the extracted answer (box content or ground truth).

  Returns:
    The canonical string; two answers are "mathd-equal" when these are identical.
  """
  # Dr.GRPO's mathd grader first unwraps an answer that is entirely `\text{...}`.
  wrapped = re.fullmatch(r"\s*\\text\{(.+?)\}\s*", answer)
  s = wrapped.group(1) if wrapped else answer
  s = s.replace("\n", "")
  s = s.replace("\\!", "")
  s = s.replace("\\\\", "\\")
  s = s.replace("tfrac", "frac").replace("dfrac", "frac")
  s = s.replace("\\left", "").replace("\\right", "")
  s = s.replace("^{\\circ}", "").replace("^\\circ", "")
  s = s.replace("\\$", "")
  s = _drop_trailing_text_unit(s)
  s = s.replace("\\%", "").replace("%", "")
  # A bare leading decimal point: ".5" and "{.5" mean 0.5.
  s = s.replace(" .", " 0.").replace("{.", "{0.")
  if s.startswith("."):
    s = "0" + s
  # "x = 5" / "k=5": a short variable name before "=" is not part of the answer.
  sides = s.split("=")
  if len(sides) == 2 and len(sides[0].strip()) <= 2:
    s = sides[1]
  s = _braced_sqrt(s)
  s = s.replace(" ", "")
  s = _braced_fracs(s)
  # MATH writes one half as a fraction; a model that says 0.5 should match it.
  if s == "0.5":
    s = "\\frac{1}{2}"
  s = _slash_to_frac(s)
  return s


def mathd_equal(given: str, ground_truth: str) -> bool:
  """True when both answers normalise to the same string."""
  return normalize_mathd(given) == normalize_mathd(ground_truth)
