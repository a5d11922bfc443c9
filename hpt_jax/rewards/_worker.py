"""The loop run by each `RewardPool` worker process.

The pool's forkserver preloads `rewards._preload` (sympy and math-verify), so forked workers do not
import them again; this module itself imports neither, so the pool's owner (which pickles `serve` by
reference) does not hold them. Each worker grades one throw-away answer before it says READY:
math-verify builds its parsers lazily on first use, which on a loaded machine can take longer than a
per-answer timeout.
"""

from __future__ import annotations

import logging
import signal

from hpt_jax.rewards.verifier import Variant, Verdict, verdict

READY = "ready"


def serve(conn) -> None:
  """Says READY, then answers `(response, truths, variant_value)` messages with a `Verdict` value
  until `None` arrives. A grader exception is reported as ERROR for that answer; the worker goes on.
  """
  # Ctrl-C in a terminal reaches the whole process group; the pool's owner decides when workers stop.
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  logging.getLogger("math_verify").setLevel(logging.ERROR)
  verdict("\\boxed{\\frac{1}{2}}", "(1,2]")  # warm-up (see module docstring).
  conn.send(READY)
  while True:
    try:
      message = conn.recv()
    except (EOFError, OSError):
      return
    if message is None:
      return
    response, truths, variant = message
    try:
      result = verdict(response, truths, variant=Variant(variant))
    except Exception:  # noqa: BLE001 -- any grader failure scores 0, counted as an error.
      result = Verdict.ERROR
    conn.send(result.value)
