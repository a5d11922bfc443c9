"""The built-in task: seeded multi-digit addition with step-by-step column demonstrations.

Level L (1-5) adds two L-digit numbers. The demonstration adds digits from the right, one line per column
with its carry, then boxes the sum -- the format a ~3M-parameter model learns on 2 CPU cores in minutes
(/work/shared/notes/tiny-model-feasibility.md):

    question: 47+85=
    demonstration:
      7+5+0=12
      4+8+1=13
      \\boxed{132}

A model trained on the short levels solves them but not the long ones (no correct rollouts, so RL alone
gets no signal there), which is the regime HPT's gate switches to SFT for.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Collection

LEVELS = (1, 2, 3, 4, 5)
DATA_SOURCE = "builtin_arithmetic"
# Stands in for LUFFY's system message; `load_openr1` drops it like HPT does.
DATASET_SYSTEM_MESSAGE = "You are a careful calculator."


@dataclasses.dataclass(frozen=True)
class Problem:
  question: str  # "47+85="
  demonstration: str  # column-by-column working ending in \boxed{sum}
  answer: str  # "132"
  level: int


def column_addition(a: int, b: int) -> str:
  """The demonstration for `a + b` (non-negative): right-to-left columns with carries, then the box."""
  if a < 0 or b < 0:
    raise ValueError(f"operands must be non-negative, got {a} and {b}")
  da, db = str(a)[::-1], str(b)[::-1]
  carry, lines = 0, []
  for i in range(max(len(da), len(db))):
    x = int(da[i]) if i < len(da) else 0
    y = int(db[i]) if i < len(db) else 0
    total = x + y + carry
    lines.append(f"{x}+{y}+{carry}={total}")
    carry = total // 10
  lines.append(f"\\boxed{{{a + b}}}")
  return "\n".join(lines)


def make_problem(a: int, b: int, *, level: int) -> Problem:
  return Problem(question=f"{a}+{b}=", demonstration=column_addition(a, b), answer=str(a + b), level=level)


def _operand(rng: random.Random, level: int) -> int:
  low = 0 if level == 1 else 10 ** (level - 1)
  return rng.randint(low, 10 ** level - 1)


def generate(*, seed: int, level: int, count: int, exclude: Collection[str] = ()) -> list[Problem]:
  """`count` problems of one level, deterministic in (seed, level); questions in `exclude` are skipped.

  Duplicates are allowed (level 1 has only 100 distinct problems), except that nothing in `exclude`
  (e.g. the held-out set) is ever produced.
  """
  if level not in LEVELS:
    raise ValueError(f"level must be one of {LEVELS}, got {level}")
  space = (10 if level == 1 else 9 * 10 ** (level - 1)) ** 2
  if len(set(exclude)) >= space:
    raise ValueError(f"level {level} has {space} distinct problems, all excluded")
  rng = random.Random(f"arithmetic-{seed}-{level}")
  out = []
  while len(out) < count:
    problem = make_problem(_operand(rng, level), _operand(rng, level), level=level)
    if problem.question not in exclude:
      out.append(problem)
  return out


def generate_distinct(*, seed: int, level: int, count: int) -> list[Problem]:
  """`count` DISTINCT problems of one level (a held-out set); fails if the level has fewer."""
  space = (10 if level == 1 else 9 * 10 ** (level - 1)) ** 2
  if count > space // 2:
    raise ValueError(f"level {level} has {space} problems; holding out {count} leaves too few to train on")
  rng = random.Random(f"arithmetic-heldout-{seed}-{level}")
  seen: dict[str, Problem] = {}
  while len(seen) < count:
    problem = make_problem(_operand(rng, level), _operand(rng, level), level=level)
    seen.setdefault(problem.question, problem)
  return list(seen.values())


def to_openr1_row(problem: Problem, *, index: int, split: str) -> dict:
  """One row in the OpenR1-Math-46k-8192 schema (see `openr1.py`)."""
  return {
      "prompt": [{"role": "system", "content": DATASET_SYSTEM_MESSAGE},
                 {"role": "user", "content": problem.question}],
      "target": [{"role": "assistant", "content": problem.demonstration}],
      "reward_model": {"ground_truth": problem.answer, "style": "rule"},
      "data_source": DATA_SOURCE,
      "extra_info": {"index": index, "level": problem.level, "split": split},
  }
