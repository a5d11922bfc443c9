"""Table-driven test of the HPT v6 verifier: (response, ground truth, expected) derived by hand.

Each expected value is what a careful human grader says about the math, except where a row is marked
DEBATABLE: there the value is the one the v6 grader's documented rules give (with the rule named), and
the comment says why a human might disagree.
"""

import pytest

from hpt_jax.rewards import Variant, Verdict, compute_score, verdict

B = "\\boxed"

CASES = [
    # --- fractions -------------------------------------------------------------------------------
    ("The answer is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}", 1),
    ("\\boxed{\\dfrac{1}{2}}", "\\frac{1}{2}", 1),
    ("\\boxed{\\tfrac{3}{4}}", "\\frac34", 1),
    ("\\boxed{1/2}", "\\frac{1}{2}", 1),
    ("\\boxed{\\frac{2}{4}}", "\\frac{1}{2}", 1),  # same value; math-verify accepts the unreduced form.
    ("\\boxed{\\frac{1}{3}}", "\\frac{1}{2}", 0),
    ("\\boxed{-\\frac{5}{7}}", "\\frac{-5}{7}", 1),
    ("\\boxed{\\frac{5}{7}}", "-\\frac{5}{7}", 0),
    ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt3}{2}", 1),
    ("\\boxed{2\\frac{1}{2}}", "\\frac{5}{2}", 1),  # mixed number 2 1/2.
    # --- decimals vs fractions --------------------------------------------------------------------
    ("\\boxed{0.5}", "\\frac{1}{2}", 1),
    ("\\boxed{.5}", "\\frac{1}{2}", 1),
    ("\\boxed{0.25}", "\\frac{1}{4}", 1),
    ("\\boxed{0.33}", "\\frac{1}{3}", 0),
    ("\\boxed{2.0}", "2", 1),
    ("\\boxed{2.5}", "2", 0),
    ("\\boxed{3.14}", "\\pi", 0),
    # --- percentages ------------------------------------------------------------------------------
    ("\\boxed{50\\%}", "50", 1),
    ("\\boxed{50}", "50\\%", 1),
    ("\\boxed{25\\%}", "50", 0),
    # DEBATABLE: both 0.5 and 50 match "50%": mathd drops "%" (50 == 50), math-verify reads 50% as 0.5.
    ("\\boxed{0.5}", "50\\%", 1),
    # --- intervals --------------------------------------------------------------------------------
    ("\\boxed{(1,2]}", "(1,2]", 1),
    ("\\boxed{[1,2]}", "(1,2]", 0),
    ("\\boxed{(-\\infty, 3)}", "(-\\infty,3)", 1),
    ("\\boxed{\\left( -\\infty, \\frac{1}{2} \\right]}", "(-\\infty, 0.5]", 1),
    ("\\boxed{(0, 1)}", "(0, 2)", 0),
    # --- tuples and sets --------------------------------------------------------------------------
    ("\\boxed{(1, 2)}", "(1,2)", 1),
    ("\\boxed{(2, 1)}", "(1,2)", 0),
    ("\\boxed{(\\frac{1}{2}, 3)}", "(0.5, 3)", 1),
    ("\\boxed{(1, 2, 3)}", "(1,2)", 0),
    ("\\boxed{\\{1, 2, 3\\}}", "\\{3, 2, 1\\}", 1),  # a set: order does not matter.
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2, 3\\}", 0),
    ("\\boxed{1, 2}", "1,2", 1),
    # --- matrices ---------------------------------------------------------------------------------
    ("\\boxed{\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}}",
     "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", 1),
    ("\\boxed{\\begin{pmatrix} 1 & 2 \\\\ 3 & 5 \\end{pmatrix}}",
     "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", 0),
    ("\\boxed{\\begin{pmatrix} \\frac{1}{2} \\\\ 1 \\end{pmatrix}}", "\\begin{pmatrix} 0.5 \\\\ 1 \\end{pmatrix}", 1),
    # --- units and \text{} ------------------------------------------------------------------------
    ("\\boxed{5 \\text{ cm}}", "5", 1),
    ("\\boxed{12 \\text{ inches}}", "12", 1),
    ("\\boxed{\\text{12}}", "12", 1),
    ("\\boxed{90^\\circ}", "90", 1),
    ("\\boxed{\\$18.90}", "18.90", 1),
    ("\\boxed{\\text{Monday}}", "\\text{Monday}", 1),
    ("\\boxed{\\text{Tuesday}}", "\\text{Monday}", 0),
    ("\\boxed{7 \\text{ meters}}", "8", 0),
    # --- \left( \right) ---------------------------------------------------------------------------
    ("\\boxed{\\left(3, 4\\right)}", "(3,4)", 1),
    ("\\boxed{\\left( \\frac{1}{2} \\right)}", "\\frac12", 1),
    # --- multiple boxes: only the last counts ------------------------------------------------------
    ("First \\boxed{3}, then corrected: \\boxed{4}", "4", 1),
    ("First \\boxed{4}, then corrected: \\boxed{3}", "4", 0),
    ("\\fbox{7}", "7", 1),
    ("\\boxed{1} and finally \\fbox{2}", "2", 1),
    # --- no box -----------------------------------------------------------------------------------
    ("The answer is 4.", "4", 0),
    ("", "4", 0),
    ("\\boxed{4", "4", 0),  # truncated box: unbalanced.
    # --- nested braces ----------------------------------------------------------------------------
    ("\\boxed{\\frac{\\sqrt{2}}{\\sqrt{8}}}", "\\frac{1}{2}", 1),
    ("\\boxed{{{5}}}", "5", 1),
    ("\\boxed{x^{2}+1}", "x^2+1", 1),
    ("\\boxed{x^{2}+1}", "x^2-1", 0),
    # --- negatives --------------------------------------------------------------------------------
    ("\\boxed{-3}", "-3", 1),
    ("\\boxed{3}", "-3", 0),
    ("\\boxed{- 3}", "-3", 1),
    ("\\boxed{-0.75}", "-\\frac{3}{4}", 1),
    # --- pi and radicals --------------------------------------------------------------------------
    ("\\boxed{2\\pi}", "2\\pi", 1),
    ("\\boxed{\\pi/2}", "\\frac{\\pi}{2}", 1),
    ("\\boxed{\\frac{\\pi}{3}}", "\\frac{\\pi}{2}", 0),
    ("\\boxed{2\\sqrt{3}}", "\\sqrt{12}", 1),
    ("\\boxed{\\sqrt{2}}", "\\sqrt{3}", 0),
    ("\\boxed{\\sqrt[3]{8}}", "2", 1),
    ("\\boxed{3\\sqrt{2}}", "\\sqrt{18}", 1),
    ("\\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{\\sqrt{2}}{2}", 1),
    # --- algebra / equations ----------------------------------------------------------------------
    ("\\boxed{x = 3}", "3", 1),
    ("\\boxed{2x+2}", "2(x+1)", 1),
    ("\\boxed{1,000}", "1000", 1),
    ("\\boxed{10^{3}}", "1000", 1),
    # --- garbage ----------------------------------------------------------------------------------
    ("\\boxed{}", "4", 0),
    ("\\boxed{\\frac{}{}}", "4", 0),
    ("\\boxed{)(}", "4", 0),
    ("\\boxed{4 \\\\\\\\ \\frac}", "3", 0),
    ("\\boxed{" + "9" * 600 + "}", "9", 0),
    # --- unicode ----------------------------------------------------------------------------------
    ("\\boxed{π}", "\\pi", 1),
    ("\\boxed{√2}", "\\sqrt{2}", 1),
    ("\\boxed{−3}", "-3", 1),  # U+2212 minus sign.
    # DEBATABLE: a full-width digit two is "2" to a reader; no normaliser maps it -> 0.
    ("\\boxed{２}", "2", 0),
    ("Ответ: \\boxed{7} 答案", "7", 1),
    # --- more edge cases ---------------------------------------------------------------------------
    ("\\boxed{4\\sqrt{2}}", "4", 0),  # math-verify issue #41 (4 == 4√2) does not bite with box-first parsing.
    ("\\boxed{-\\infty}", "\\infty", 0),
    ("\\boxed{3+2i}", "3+2i", 1),
    ("\\boxed{y=2x+1}", "2x+1", 1),  # a short "y =" prefix is dropped by mathd normalisation.
    ("\\boxed{x=2 \\text{ or } x=3}", "2,3", 1),
    # DEBATABLE: a bare list "2, 3" is accepted for the set {2, 3} (math-verify compares them as sets).
    ("\\boxed{2, 3}", "\\{2,3\\}", 1),
    # DEBATABLE: 0.333333 is not 1/3, but math-verify compares numbers rounded to 6 decimals.
    ("\\boxed{0.333333}", "\\frac{1}{3}", 1),
    # DEBATABLE (a known miss): a reader says 1e3 = 1000; none of the three tests reads e-notation -> 0.
    ("\\boxed{1e3}", "1000", 0),
    # --- list-valued ground truth ------------------------------------------------------------------
    ("\\boxed{6}", ["5", "6"], 1),
    ("\\boxed{7}", ["5", "6"], 0),
    # --- ground truth stored boxed ----------------------------------------------------------------
    ("\\boxed{12}", "\\boxed{12}", 1),
]


def test_table_has_at_least_60_cases():
  assert len(CASES) >= 60


@pytest.mark.parametrize("response,ground_truth,expected", CASES)
def test_v6_table(response, ground_truth, expected):
  assert compute_score(response, ground_truth) == float(expected), verdict(response, ground_truth)


def test_verdict_reasons():
  assert verdict("no box here", "4") is Verdict.NO_BOX
  assert verdict("\\boxed{5}", "4") is Verdict.WRONG
  assert verdict("\\boxed{4}", "4") is Verdict.CORRECT
  # A long repetitive answer never reaches sympy / math-verify.
  assert verdict("\\boxed{" + "1+" * 300 + "1}", "601") is Verdict.REJECTED


def test_luffy_variant_grades_only_after_think():
  # v6 grades the whole response; LUFFY requires </think> and looks only after it.
  assert compute_score("\\boxed{4}", "4", variant=Variant.LUFFY_THINK) == 0.0
  assert verdict("\\boxed{4}", "4", variant=Variant.LUFFY_THINK) is Verdict.NO_THINK
  assert compute_score("guess \\boxed{4}</think> so \\boxed{5}", "4", variant=Variant.LUFFY_THINK) == 0.0
  assert compute_score("guess \\boxed{4}</think> so \\boxed{5}", "4") == 0.0
  assert compute_score("guess \\boxed{5}</think> so \\boxed{4}", "4", variant=Variant.LUFFY_THINK) == 1.0
  assert compute_score("\\boxed{4}</think> done", "4", variant=Variant.LUFFY_THINK) == 0.0
  assert compute_score("\\boxed{4}</think> done", "4") == 1.0


def test_bad_ground_truth_is_a_clear_error():
  with pytest.raises(TypeError, match="ground_truth"):
    compute_score("\\boxed{1}", None)
  with pytest.raises(ValueError, match="empty"):
    compute_score("\\boxed{1}", [])
