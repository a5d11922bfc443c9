"""Answer extraction: the last `\\boxed{...}` / `\\fbox{...}` of a response, with nested braces.

HPT's reward v6 (PAPER.md §3 "Reward / verifier") grades only the content of the LAST box in the whole
response; a response without a box scores 0. The LUFFY-style variant first cuts the response at
`</think>` and grades only what follows it.
"""

from __future__ import annotations

_BOX_COMMANDS = ("\\boxed", "\\fbox")
THINK_END = "</think>"


def _last_box_start(text: str) -> tuple[int, str] | None:
  """Returns (position, command) of the right-most `\\boxed` or `\\fbox`, or None."""
  best = None
  for command in _BOX_COMMANDS:
    pos = text.rfind(command)
    if pos >= 0 and (best is None or pos > best[0]):
      best = (pos, command)
  return best


def matching_brace(s: str, open_pos: int) -> int:
  """Index of the `}` matching `s[open_pos] == '{'` (plain nesting, no escapes); -1 when unbalanced."""
  depth = 0
  for i in range(open_pos, len(s)):
    if s[i] == "{":
      depth += 1
    elif s[i] == "}":
      depth -= 1
      if depth == 0:
        return i
  return -1


def _braced_content(text: str, open_pos: int) -> str | None:
  """Content between `text[open_pos] == '{'` and its matching `}`; None when unbalanced."""
  depth = 0
  for i in range(open_pos, len(text)):
    ch = text[i]
    # An escaped brace `\{` / `\}` is a literal brace in LaTeX and does not change the nesting.
    if ch in "{}" and i > 0 and text[i - 1] == "\\":
      continue
    if ch == "{":
      depth += 1
    elif ch == "}":
      depth -= 1
      if depth == 0:
        return text[open_pos + 1:i]
  return None


def last_boxed(text: str) -> str | None:
  """Content of the last `\\boxed{...}` or `\\fbox{...}` in `text`; None when there is none.

  The right-most of either command wins (Hendrycks' helper looks for `\\fbox` only when there is no
  `\\boxed` at all; the spec says "the last `\\boxed{}` / `\\fbox{}`", which we follow literally).
  Also accepts the brace-less form `\\boxed 5` (content up to the next `$` or whitespace), which
  Hendrycks' MATH extraction accepts too. An unbalanced last box (`\\boxed{1` at the end of a truncated
  response) yields None: a truncated answer is not an answer.
  """
  found = _last_box_start(text)
  if found is None:
    return None
  pos, command = found
  rest = pos + len(command)
  # Skip spaces between the command and its argument (`\boxed {5}` is valid LaTeX).
  while rest < len(text) and text[rest] == " ":
    rest += 1
  if rest < len(text) and text[rest] == "{":
    return _braced_content(text, rest)
  if rest > pos + len(command):  # `\boxed 5`: the argument is the next token.
    end = rest
    while end < len(text) and text[end] not in "$ \n":
      end += 1
    return text[rest:end] or None
  return None


def strip_box(text: str) -> str:
  """`\\boxed{x}` → `x` when `text` contains a box (ground truths are sometimes stored boxed)."""
  if any(command in text for command in _BOX_COMMANDS):
    inner = last_boxed(text)
    if inner is not None:
      return inner
  return text


def after_think(text: str) -> str | None:
  """Text after the first `</think>`; None when the response has no `</think>` (LUFFY scores it 0)."""
  pos = text.find(THINK_END)
  if pos < 0:
    return None
  return text[pos + len(THINK_END):]
