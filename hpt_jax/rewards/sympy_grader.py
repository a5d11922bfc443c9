"""Symbolic equality of two answers, after PRM800K-style normalisation (the second test of HPT v6).

The steps follow the published PRM800K grader that Dr.GRPO's `math_grader` (and so HPT's
`entropy_math`) adapted: strip `\\text{}`, `$`, `%`, unit words and thousands separators; turn the LaTeX
into a plain expression; split tuples / intervals at top-level commas and compare element-wise with
matching bracket types; two integers must be equal as integers, an integer never equals a non-integer,
and two plain fractions `a/b` must be written identically (the reduced-fraction requirement); anything
else is equal when `sympy.simplify(gt - given) == 0`, but only for expressions that pass a cheap guard
(few unknown letters, no huge exponents) so that sympy is never asked to expand a power tower.

Differences from PRM800K, all deliberate: the LaTeX → text step is our own small converter
(`latex_to_plain`, no pylatexenc), tuple splitting tracks bracket depth instead of refusing nested
brackets, and `pi` is not counted as two unknown letters.

sympy is imported where it is first used, not with this module: a trainer whose answers are graded in
`RewardPool` workers (whose server preloads it, `rewards._preload`) never holds its ~40 MiB.
"""

from __future__ import annotations

import re

from hpt_jax.rewards.extract import matching_brace

_UNIT_WORDS = (
    "degree", "cm", "centimeter", "meter", "mile", "second", "minute", "hour", "day", "week", "month",
    "year", "foot", "feet", "inch", "yard", "unit", "liter", "gram", "kilogram", "dollar",
)
_UNIT_RE = re.compile(r"(?<![a-z])(" + "|".join(_UNIT_WORDS) + r")(es)?(s)? *(\^[0-9]+)?")
_TEXT_WRAPPERS = ("\\text", "\\textbf", "\\mathrm", "\\mathbf", "\\mbox", "\\operatorname")
_DROP_COMMANDS = ("\\left", "\\right", "\\,", "\\!", "\\;", "\\:", "\\displaystyle", "\\quad")
_SYMBOLS = (
    ("\\pi", " pi "), ("π", " pi "), ("\\infty", " oo "), ("∞", " oo "), ("\\cdot", "*"),
    ("\\times", "*"), ("×", "*"), ("·", "*"), ("\\div", "/"), ("−", "-"), ("^\\circ", ""),
    ("\\circ", ""), ("\\%", ""), ("%", ""), ("\\$", ""), ("$", ""),
)
_TUPLE_OPEN = "([{"
_TUPLE_CLOSE = ")]}"
_FRAC_RE = re.compile(r"^-?[0-9]+/0*[1-9][0-9]*$")
_INT_RE = re.compile(r"^-?[0-9]+$")
_FLOAT_RE = re.compile(r"^-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)$")
_THOUSANDS_RE = re.compile(r"(\d),(\d\d\d)(?=$|\D)")
_MAX_UNKNOWN_LETTERS = 2
# Exponents that make simplify explode: a tower `a^b^c` or a multi-digit power.
_BAD_EXPONENT_RE = (re.compile(r"\^[0-9]+\^"), re.compile(r"\^[0-9][0-9]+"), re.compile(r"\*\*[0-9]+\*\*"),
                    re.compile(r"\*\*[0-9][0-9]+"))


def _take_group(s: str, pos: int) -> tuple[str, int] | None:
  """The argument starting at `pos`: a `{...}` group or a single character. Returns (arg, end)."""
  while pos < len(s) and s[pos] == " ":
    pos += 1
  if pos >= len(s):
    return None
  if s[pos] == "{":
    end = matching_brace(s, pos)
    if end < 0:
      return None
    return s[pos + 1:end], end + 1
  return s[pos], pos + 1


def _rewrite_command(s: str, command: str, arity: int, build) -> str:
  """Replaces every `command{a}{b}...` by `build(a, b, ...)`, innermost arguments converted first."""
  out = []
  i = 0
  while True:
    j = s.find(command, i)
    if j < 0:
      out.append(s[i:])
      return "".join(out)
    after = j + len(command)
    # `\frac` must not match the prefix of a longer command name such as `\fracx`.
    if after < len(s) and s[after].isalpha():
      out.append(s[i:after])
      i = after
      continue
    out.append(s[i:j])
    args = []
    pos = after
    for _ in range(arity):
      group = _take_group(s, pos)
      if group is None:
        raise ValueError(f"malformed {command} in {s!r}")
      args.append(group[0])
      pos = group[1]
    out.append(build(*[latex_to_plain(a) for a in args]))
    i = pos


def _sqrt_with_index(s: str) -> str:
  r"""`\sqrt[n]{x}` → `((x)**(1/(n)))`."""
  while "\\sqrt[" in s:
    j = s.find("\\sqrt[")
    close = s.find("]", j)
    if close < 0:
      raise ValueError(f"malformed \\sqrt[ in {s!r}")
    index = s[j + len("\\sqrt["):close]
    group = _take_group(s, close + 1)
    if group is None:
      raise ValueError(f"malformed \\sqrt[ in {s!r}")
    s = s[:j] + f"(({latex_to_plain(group[0])})**(1/({index})))" + s[group[1]:]
  return s


def latex_to_plain(s: str) -> str:
  r"""Converts the LaTeX math subset that answers use into a sympy-parsable string.

  Handles `\frac/\dfrac/\tfrac`, `\sqrt{}`, `\sqrt[n]{}`, `\text{}`-like wrappers, `\pi`, `\infty`,
  `\cdot`, `\times`, spacing commands, `^{}` and braces. Unknown commands are left in place, so the
  later sympy parse fails and the pair is judged "not equal" rather than silently mis-read.
  """
  for command in _TEXT_WRAPPERS:
    s = _rewrite_command(s, command, 1, lambda a: a)
  for command in _DROP_COMMANDS:
    s = s.replace(command, " ")
  s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
  # Mixed numbers `2\frac{1}{3}` mean 2 + 1/3 (PRM800K's convention).
  s = re.sub(r"(\d)\s*\\frac\{(\d+)\}\{(\d+)\}", r"\1+\\frac{\2}{\3}", s)
  s = _sqrt_with_index(s)
  s = _rewrite_command(s, "\\frac", 2, lambda a, b: f"(({a})/({b}))")
  s = _rewrite_command(s, "\\sqrt", 1, lambda a: f"sqrt({a})")
  # A unicode radical takes the number or letter right after it: `√12` → `sqrt(12)`.
  s = re.sub(r"√\s*([0-9]+|[a-zA-Z])", r"sqrt(\1)", s).replace("√", "sqrt")
  for old, new in _SYMBOLS:
    s = s.replace(old, new)
  s = s.replace("{", "(").replace("}", ")")
  return s.strip()


def _strip_outer_text(expr: str) -> str:
  m = re.fullmatch(r"\\text\{(.+?)\}", expr)
  return m.group(1) if m else expr


def normalize_prm(expr: str) -> str:
  """PRM800K-style normalisation of one answer element (see module docstring)."""
  expr = _strip_outer_text(expr.strip())
  expr = expr.replace("\\%", "%").replace("\\$", "$").replace("$", "").replace("%", "")
  expr = expr.replace(" or ", " , ").replace(" and ", " , ")
  expr = expr.replace("million", "*10^6").replace("billion", "*10^9").replace("trillion", "*10^12")
  expr = _UNIT_RE.sub("", expr)
  expr = re.sub(r"\^ *\\circ", "", expr)
  if len(expr) > 1 and expr[0] == "{" and expr[-1] == "}":
    expr = expr[1:-1]
  expr = re.sub(r",\\! *", "", expr)
  if _FLOAT_RE.match(expr) and float(expr) == int(float(expr)):
    expr = str(int(float(expr)))
  if "\\" in expr or any(ch in expr for ch in "π√∞×·−"):
    expr = latex_to_plain(expr)
  expr = re.sub(r"- *", "-", expr)
  # "3 1/2" is a mixed number.
  expr = re.sub(r"([0-9]) +([0-9]+/[0-9]+)", r"\1+\2", expr)
  expr = expr.replace(" ", "").replace("{", "").replace("}", "").lower()
  if _INT_RE.match(expr.replace(",", "")):
    expr = str(int(expr.replace(",", "")))
  return expr


def split_tuple(expr: str) -> list[str]:
  """Splits `(a,b)` / `[a,b)` / `\\{a,b\\}` at top-level commas; anything else is one element."""
  while _THOUSANDS_RE.search(expr):  # "1,234,567": each pass removes one separator per group.
    expr = _THOUSANDS_RE.sub(r"\1\2", expr)
  expr = expr.replace("\\left", "").replace("\\right", "").replace("\\{", "{").replace("\\}", "}")
  expr = expr.strip()
  if len(expr) <= 2 or expr[0] not in _TUPLE_OPEN or expr[-1] not in _TUPLE_CLOSE:
    return [expr]
  inner = expr[1:-1]
  elems, depth, start = [], 0, 0
  for i, ch in enumerate(inner):
    if ch in _TUPLE_OPEN:
      depth += 1
    elif ch in _TUPLE_CLOSE:
      depth -= 1
      if depth < 0:  # `(1)+(2)`: the outer brackets do not enclose everything.
        return [expr]
    elif ch == "," and depth == 0:
      elems.append(inner[start:i].strip())
      start = i + 1
  if depth != 0:
    return [expr]
  elems.append(inner[start:].strip())
  return elems if len(elems) > 1 else [expr]


def _unknown_letters(expr: str) -> int:
  for known in ("sqrt", "frac", "pi", "oo"):
    expr = expr.replace(known, "")
  return len({ch for ch in expr if ch.isalpha()})


def allow_sympy(expr: str) -> bool:
  """Cheap guard: sympy only sees expressions with few unknowns and no large or stacked exponents."""
  if _unknown_letters(expr) > _MAX_UNKNOWN_LETTERS:
    return False
  if "^{" in expr or "^(" in expr:
    return False
  return not any(r.search(expr) for r in _BAD_EXPONENT_RE)


def _sympy_parse(expr: str):
  from sympy.parsing import sympy_parser  # noqa: PLC0415 -- heavy; see the module docstring.

  transformations = sympy_parser.standard_transformations + (
      sympy_parser.implicit_multiplication_application,)
  return sympy_parser.parse_expr(expr.replace("^", "**"), transformations=transformations, evaluate=True)


def sympy_equal_plain(gt: str, given: str) -> bool:
  """`simplify((gt) - (given)) == 0` for two normalised elements, behind `allow_sympy`."""
  diff = f"({gt})-({given})"
  if not allow_sympy(diff):
    return False
  import sympy  # noqa: PLC0415 -- heavy; see the module docstring.

  try:
    return sympy.simplify(_sympy_parse(diff)) == 0
  except Exception:  # noqa: BLE001 -- any parse/eval failure means "not shown equal".
    return False


def _elements_equal(gt: str, given: str) -> bool:
  if _FRAC_RE.match(gt) and _FRAC_RE.match(given):
    return gt == given
  if bool(_INT_RE.match(gt)) != bool(_INT_RE.match(given)):
    return False
  return sympy_equal_plain(gt, given)


def sympy_equal(given: str, ground_truth: str) -> bool:
  """PRM800K's `grade_answer_sympy`: tuple-aware, integer-strict symbolic equality."""
  try:
    gt_raw, given_raw = split_tuple(ground_truth), split_tuple(given)
    gt_elems = [normalize_prm(e) for e in gt_raw]
    given_elems = [normalize_prm(e) for e in given_raw]
  except (ValueError, RecursionError, OverflowError):
    return False
  if not gt_elems or not given_elems or not given_elems[0]:
    return False
  if gt_elems == given_elems and len(gt_raw) == 1:
    return True
  if len(gt_elems) != len(given_elems):
    return False
  if len(gt_elems) > 1:
    # An interval's brackets are part of the answer: (1,2] is not [1,2].
    gt_s, given_s = ground_truth.strip(), given.strip()
    gt_s = gt_s.replace("\\left", "").replace("\\right", "").replace("\\{", "{").replace("\\}", "}")
    given_s = given_s.replace("\\left", "").replace("\\right", "").replace("\\{", "{").replace("\\}", "}")
    if gt_s.strip()[0] != given_s.strip()[0] or gt_s.strip()[-1] != given_s.strip()[-1]:
      return False
  return all(_elements_equal(g, p) for g, p in zip(gt_elems, given_elems))
