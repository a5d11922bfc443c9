"""What a `RewardPool`'s forkserver imports once, so that every forked worker starts with it loaded.

The graders import sympy and math-verify lazily (where they are first used), which keeps them out of
the trainer's process; the workers are where they run, so the server imports them up front.
"""

import math_verify  # noqa: F401 -- preloaded on purpose (see module docstring).
import sympy  # noqa: F401
from sympy.parsing import sympy_parser  # noqa: F401

from hpt_jax.rewards import _worker  # noqa: F401
