"""The verifier's parts one by one: extraction, mathd normalisation, sympy grading, letter grading."""

import pytest

from hpt_jax.rewards import after_think, extract_choice, grade_choice, last_boxed
from hpt_jax.rewards.mathd import normalize_mathd
from hpt_jax.rewards.sympy_grader import allow_sympy, latex_to_plain, normalize_prm, split_tuple, sympy_equal


@pytest.mark.parametrize("text,expected", [
    ("a \\boxed{1} b \\boxed{\\frac{1}{2}} c", "\\frac{1}{2}"),
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces do not close the box
    ("\\fbox{x} then \\boxed{y}", "y"),
    ("\\boxed{y} then \\fbox{x}", "x"),
    ("\\boxed 5$", "5"),
    ("\\boxed {7}", "7"),
    ("\\boxed{1", None),
    ("no box", None),
])
def test_last_boxed(text, expected):
  assert last_boxed(text) == expected


def test_after_think():
  assert after_think("a</think>b</think>c") == "b</think>c"
  assert after_think("no think") is None


@pytest.mark.parametrize("raw,expected", [
    ("\\dfrac12", "\\frac{1}{2}"),
    ("\\tfrac{3}4", "\\frac{3}{4}"),
    ("3/4", "\\frac{3}{4}"),
    ("0.5", "\\frac{1}{2}"),
    (".75", "0.75"),
    ("x = 7", "7"),
    ("\\left( 1, 2 \\right)", "(1,2)"),
    ("45^\\circ", "45"),
    ("10\\%", "10"),
    ("\\$5", "5"),
    ("3 \\text{ cm}", "3"),
    ("2\\sqrt3", "2\\sqrt{3}"),
])
def test_normalize_mathd(raw, expected):
  assert normalize_mathd(raw) == expected


def test_prm_normalisation_and_latex_conversion():
  assert latex_to_plain("\\frac{\\sqrt{2}}{2}") == "((sqrt(2))/(2))"
  assert latex_to_plain("\\sqrt[3]{x}") == "((x)**(1/(3)))"
  assert normalize_prm("\\text{5 inches}") == "5"
  assert normalize_prm("1,000") == "1000"
  assert normalize_prm("2.0") == "2"
  assert split_tuple("(1, (2,3), 4]") == ["1", "(2,3)", "4"]
  assert split_tuple("(1)+(2)") == ["(1)+(2)"]
  assert split_tuple("1,234,567") == ["1234567"]


def test_sympy_rules():
  assert sympy_equal("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}")
  assert not sympy_equal("2/4", "1/2")  # PRM800K: two plain fractions must be written alike.
  assert not sympy_equal("2.5", "2")  # an integer never equals a non-integer
  assert not sympy_equal("[1,2]", "(1,2)")
  assert sympy_equal("(1, 2)", "(1,2)")
  assert not allow_sympy("9^9^9")
  assert not allow_sympy("2^100")
  assert not allow_sympy("a+b+c")  # three unknowns


@pytest.mark.parametrize("response,answer,expected", [
    ("The answer is \\boxed{B}.", "B", 1.0),
    ("\\boxed{(C)}", "C", 1.0),
    ("\\boxed{\\text{D}}", "D", 1.0),
    ("\\boxed{A. 42}", "A", 1.0),
    ("\\boxed{A}", "B", 0.0),
    ("The answer is (b)", "B", 1.0),
    ("Answer: C", "C", 1.0),
    ("I think A, but the answer is D", "D", 1.0),
    ("\\boxed{E}", "D", 0.0),  # E is not among the default choices A-D: no pick
    ("no letter here", "A", 0.0),
])
def test_grade_choice(response, answer, expected):
  assert grade_choice(response, answer) == expected


def test_choice_letters_are_validated():
  assert extract_choice("\\boxed{E}", choices="ABCDE") == "E"
  assert extract_choice("\\boxed{E}") is None
  with pytest.raises(ValueError, match="one letter"):
    grade_choice("\\boxed{A}", "AB")
