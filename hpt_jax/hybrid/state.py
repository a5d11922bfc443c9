"""The gate's state: counters and per-question solve history, as an optax-style (init, update) pair.

`make_gate(gate, num_questions=...)` returns a `GateTransform` whose
  * `init() -> GateState` builds the empty state,
  * `update(state, question_ids=..., correct=..., num_rollouts=...) -> (GateDecision, GateState)`
    routes one batch of questions and records it (pure: the input state is not modified),
  * `keep(state, question_ids) -> [Q] bool` says which questions may still be trained on: with
    `drop_demo_questions=True` a question once routed to the demonstration loss is dropped from
    later batches (the official code's `remove_sfted_data`, off in all its scripts).

`GateState` is a NamedTuple of NumPy arrays, so it checkpoints with orbax beside the optimizer
state. Letters: Q questions in the batch, N questions in the dataset.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from hpt_jax.hybrid.gate import Gate, GateDecision, decide


class GateState(NamedTuple):
  """Counters and per-question history (question ids index the dataset, 0..N-1)."""

  step: np.ndarray  # int64 [], number of updates
  num_rl: np.ndarray  # int64 [], questions routed with α > 0 so far
  num_demo: np.ndarray  # int64 [], questions routed with β > 0 so far
  times_seen: np.ndarray  # int64 [N]
  times_demo: np.ndarray  # int64 [N], times routed to the demonstration row
  last_correct: np.ndarray  # int64 [N], correct count at the last visit, -1 if never seen
  last_step: np.ndarray  # int64 [N], step of the last visit, -1 if never seen
  solve_sum: np.ndarray  # float64 [N], Σ over visits of P (mean solve rate = solve_sum / times_seen)


class GateTransform(NamedTuple):
  init: Callable[[], GateState]
  update: Callable[..., tuple[GateDecision, GateState]]
  keep: Callable[[GateState, np.ndarray], np.ndarray]


def _check_ids(question_ids: np.ndarray, num_questions: int) -> np.ndarray:
  ids = np.asarray(question_ids)
  if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f"question_ids must be a [Q] integer array, got shape {ids.shape} dtype {ids.dtype}")
  if np.any(ids < 0) or np.any(ids >= num_questions):
    bad = np.flatnonzero((ids < 0) | (ids >= num_questions))
    raise ValueError(f"question_ids out of range [0, {num_questions}) at batch positions {bad.tolist()}")
  return ids.astype(np.int64)


def make_gate(gate: Gate, *, num_questions: int, drop_demo_questions: bool = False) -> GateTransform:
  """Builds the (init, update, keep) triple of `gate` over a dataset of `num_questions` questions."""
  if num_questions < 1:
    raise ValueError(f"num_questions must be >= 1, got {num_questions}")

  def init() -> GateState:
    zeros = np.zeros((num_questions,), np.int64)
    return GateState(
        step=np.zeros((), np.int64),
        num_rl=np.zeros((), np.int64),
        num_demo=np.zeros((), np.int64),
        times_seen=zeros,
        times_demo=zeros.copy(),
        last_correct=np.full((num_questions,), -1, np.int64),
        last_step=np.full((num_questions,), -1, np.int64),
        solve_sum=np.zeros((num_questions,), np.float64),
    )

  def update(state: GateState, *, question_ids: np.ndarray, correct: np.ndarray,
             num_rollouts: np.ndarray | int) -> tuple[GateDecision, GateState]:
    ids = _check_ids(question_ids, num_questions)
    decision = decide(gate, correct=correct, num_rollouts=num_rollouts)
    if decision.alpha.shape != ids.shape:
      raise ValueError(f"question_ids {ids.shape} and correct {decision.alpha.shape} differ in length")
    times_seen = state.times_seen.copy()
    times_demo = state.times_demo.copy()
    solve_sum = state.solve_sum.copy()
    last_correct = state.last_correct.copy()
    last_step = state.last_step.copy()
    # np.add.at so a question repeated within one batch is counted every time.
    np.add.at(times_seen, ids, 1)
    np.add.at(times_demo, ids, decision.add_demo.astype(np.int64))
    np.add.at(solve_sum, ids, decision.success_rate)
    last_correct[ids] = np.asarray(correct, np.int64)
    last_step[ids] = state.step
    new_state = GateState(
        # np.asarray: NumPy scalar arithmetic yields np.int64 scalars, which orbax refuses (0-d arrays only).
        step=np.asarray(state.step + 1, np.int64),
        num_rl=np.asarray(state.num_rl + decision.keep_rollouts.sum(), np.int64),
        num_demo=np.asarray(state.num_demo + decision.add_demo.sum(), np.int64),
        times_seen=times_seen,
        times_demo=times_demo,
        last_correct=last_correct,
        last_step=last_step,
        solve_sum=solve_sum,
    )
    return decision, new_state

  def keep(state: GateState, question_ids: np.ndarray) -> np.ndarray:
    ids = _check_ids(question_ids, num_questions)
    if not drop_demo_questions:
      return np.ones(ids.shape, bool)
    return state.times_demo[ids] == 0

  return GateTransform(init=init, update=update, keep=keep)


def gate_metrics(state: GateState, decision: GateDecision, *, num_rollouts: int) -> dict[str, float]:
  """Host-side metrics of one routing step.

  `off_example_ratio` is the official code's logged (and Fig. 6's plotted) share of demonstration
  rows among all rows: #demo / (#demo + n·#rl).
  """
  num_demo = float(decision.add_demo.sum())
  num_rl_rows = float(decision.keep_rollouts.sum()) * num_rollouts
  total = num_demo + num_rl_rows
  return {
      "gate/demo_questions": num_demo,
      "gate/rl_questions": float(decision.keep_rollouts.sum()),
      "gate/off_example_ratio": num_demo / total if total else 0.0,
      "gate/mean_success_rate": float(decision.success_rate.mean()) if decision.success_rate.size else 0.0,
      "gate/total_demo_questions": float(state.num_demo),
  }
