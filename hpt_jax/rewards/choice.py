"""Multiple-choice letter grading (GPQA-Diamond, ARC-c): the model's chosen letter vs the answer letter.

The letter is read from the last `\\boxed{}` when there is one (`\\boxed{B}`, `\\boxed{(B)}`,
`\\boxed{\\text{B}}`, `\\boxed{B. 42}`), otherwise from the last "answer is (B)" / "Answer: B" phrase.
A response naming no letter among `choices` scores 0.
"""

from __future__ import annotations

import re

from hpt_jax.rewards import extract

_WRAPPED_LETTER = re.compile(r"^\s*(?:\\text(?:bf)?\{)?\s*\(?\s*([A-Za-z])\s*\)?\s*\}?\s*(?:[.:)]|$)")
_PHRASE = re.compile(r"answer\s*(?:is|:)\s*:?\s*\(?\s*\**\s*([A-Za-z])\b", re.IGNORECASE)


def extract_choice(response: str, *, choices: str = "ABCD") -> str | None:
  """The upper-case letter the response picks, or None when it names none of `choices`."""
  boxed = extract.last_boxed(response)
  candidates = []
  if boxed is not None:
    m = _WRAPPED_LETTER.match(boxed)
    if m:
      candidates.append(m.group(1))
  else:
    candidates.extend(m.group(1) for m in _PHRASE.finditer(response))
  if not candidates:
    return None
  letter = candidates[-1].upper()
  return letter if letter in choices.upper() else None


def grade_choice(response: str, answer: str, *, choices: str = "ABCD") -> float:
  """1.0 when the response's letter equals `answer` (a single letter among `choices`), else 0.0."""
  answer = answer.strip().upper()
  if len(answer) != 1 or answer not in choices.upper():
    raise ValueError(f"answer must be one letter among {choices!r}, got {answer!r}")
  return 1.0 if extract_choice(response, choices=choices) == answer else 0.0
