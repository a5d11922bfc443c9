"""Batch reward scoring in worker processes with a per-answer timeout and no signals in the caller.

`RewardPool` keeps `num_workers` processes, each fed one answer at a time over its own pipe. The caller
waits on the pipes with `multiprocessing.connection.wait(timeout=...)`, which works in any thread. A
worker that overruns its answer's deadline is killed and replaced; its answer scores 0 and is counted
as a TIMEOUT. A worker that dies (segfault, OOM kill) is replaced too; its answer is an ERROR. So one
pathological answer (a power tower math-verify never finishes, a 50 kB repetition) can neither hang nor
kill a training run.

Workers come from the `forkserver` start method with the graders preloaded: the server is a clean
interpreter (never a fork of a process that has started JAX threads), and replacing a killed worker is
a cheap fork of it rather than a fresh import of sympy and math-verify.
"""

from __future__ import annotations

import collections
import dataclasses
import multiprocessing
import multiprocessing.connection
import os
import threading
import time
from collections.abc import Sequence

import numpy as np

from hpt_jax.rewards import _worker
from hpt_jax.rewards.verifier import GroundTruth, Variant, Verdict, verdict, ground_truth_list

_PRELOAD = ["hpt_jax.rewards._preload"]
_MAX_STARTUP_FAILURES = 3


@dataclasses.dataclass(frozen=True)
class BatchScores:
  """Scores of a batch and why each got it.

  Attributes:
    scores: [N] float32, 1.0 for CORRECT, else 0.0.
    verdicts: N `Verdict`s, in input order.
    seconds: wall time of the batch.
  """
  scores: np.ndarray
  verdicts: tuple[Verdict, ...]
  seconds: float

  def counts(self) -> dict[str, int]:
    """Number of answers per verdict, every verdict present (0 when absent), e.g. `{'timeout': 1}`."""
    tally = collections.Counter(self.verdicts)
    return {v.value: tally.get(v, 0) for v in Verdict}

  def metrics(self, prefix: str = "reward/") -> dict[str, float]:
    """Flat metrics for logging: mean score and the count of every verdict."""
    out = {f"{prefix}mean": float(self.scores.mean()) if len(self.scores) else 0.0}
    out.update({f"{prefix}{name}": float(n) for name, n in self.counts().items()})
    return out


def _check_inputs(responses: Sequence[str], ground_truths: Sequence[GroundTruth]) -> list[list[str]]:
  if len(responses) != len(ground_truths):
    raise ValueError(f"responses ({len(responses)}) and ground_truths ({len(ground_truths)}) differ in length")
  truths = []
  for i, (response, truth) in enumerate(zip(responses, ground_truths)):
    if not isinstance(response, str):
      raise TypeError(f"responses[{i}] must be str, got {type(response).__name__}")
    try:
      truths.append(ground_truth_list(truth))
    except (TypeError, ValueError) as e:
      raise ValueError(f"ground_truths[{i}] is invalid: {e}") from e
  return truths


def _pack(verdicts: list[Verdict], start: float) -> BatchScores:
  scores = np.array([1.0 if v is Verdict.CORRECT else 0.0 for v in verdicts], dtype=np.float32)
  return BatchScores(scores=scores, verdicts=tuple(verdicts), seconds=time.perf_counter() - start)


def score_serial(responses: Sequence[str], ground_truths: Sequence[GroundTruth], *,
                 variant: Variant = Variant.HPT_V6) -> BatchScores:
  """Scores in this process, one after another, with NO timeout (trusted inputs, tests, baselines)."""
  start = time.perf_counter()
  truths = _check_inputs(responses, ground_truths)
  return _pack([verdict(r, t, variant=variant) for r, t in zip(responses, truths)], start)


@dataclasses.dataclass
class _Worker:
  process: multiprocessing.process.BaseProcess
  conn: multiprocessing.connection.Connection
  ready_by: float  # the worker must have said "ready" by this time (perf_counter seconds).
  ready: bool = False
  # Answers sent and not yet answered, in the order the worker grades them; the first is in progress.
  tasks: collections.deque = dataclasses.field(default_factory=collections.deque)
  deadline: float = 0.0  # for tasks[0].


class RewardPool:
  """A pool of grading processes with a per-answer timeout; use as a context manager.

  Each worker holds up to `prefetch` answers so that it never idles waiting for the caller to be
  scheduled (on a loaded machine that ping-pong, not grading, dominated). An answer's clock starts when
  the worker can start on it: when it is sent to an idle worker, or when the previous answer's result
  arrives. A replacement worker's start-up (fork, warm-up) is charged to no answer; the answers queued
  behind a killed one go back to the queue.

  Example:
    with RewardPool(num_workers=2, timeout_s=5.0) as pool:
      batch = pool.score(responses, ground_truths)
    batch.scores  # [N] float32
  """

  def __init__(self, *, num_workers: int | None = None, timeout_s: float = 5.0,
               startup_timeout_s: float = 120.0, prefetch: int = 4):
    if timeout_s <= 0:
      raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    if prefetch < 1:
      raise ValueError(f"prefetch must be >= 1, got {prefetch}")
    self.num_workers = num_workers or os.cpu_count() or 1
    if self.num_workers < 1:
      raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    self.timeout_s = float(timeout_s)
    self.startup_timeout_s = float(startup_timeout_s)
    self.prefetch = prefetch
    self._ctx = multiprocessing.get_context("forkserver")
    self._ctx.set_forkserver_preload(_PRELOAD)
    self._workers: list[_Worker] = []
    self.restarts = 0  # workers replaced after a timeout or a crash, over the pool's life.
    self._startup_failures = 0  # consecutive workers that died before saying READY.
    self._starter: threading.Thread | None = None  # a `start(wait=False)` still forking workers.

  def __enter__(self) -> RewardPool:
    self.start()
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def _spawn(self) -> _Worker:
    parent, child = self._ctx.Pipe(duplex=True)
    process = self._ctx.Process(target=_worker.serve, args=(child,), daemon=True)
    process.start()
    child.close()
    return _Worker(process=process, conn=parent, ready_by=time.perf_counter() + self.startup_timeout_s)

  def start(self, *, wait: bool = True) -> None:
    """Starts the workers (idempotent).

    Args:
      wait: block until every worker has said "ready". False returns at once: a thread forks the
        workers (the first fork waits ~1-4 s for the forkserver to import the graders) and they import
        what they need while the caller goes on (a training run compiles meanwhile); the next
        `score`, `start` or `close` waits for whatever is not done yet.
    """
    if not wait:
      if self._starter is None and len(self._workers) < self.num_workers:
        self._starter = threading.Thread(target=self._spawn_all, name="reward-pool-start", daemon=True)
        self._starter.start()
      return
    self._join_starter()
    self._spawn_all()
    while not all(w.ready for w in self._workers):
      self._poll(results=[], queue=collections.deque())

  def _spawn_all(self) -> None:
    while len(self._workers) < self.num_workers:
      self._workers.append(self._spawn())

  def _join_starter(self) -> None:
    if self._starter is not None:
      self._starter.join()
      self._starter = None

  def close(self) -> None:
    """Stops every worker: a polite stop message, then kill whatever is still alive."""
    self._join_starter()
    for w in self._workers:
      try:
        w.conn.send(None)
      except (OSError, ValueError):
        pass
    for w in self._workers:
      w.process.join(timeout=1.0)
      if w.process.is_alive():
        w.process.kill()
        w.process.join()
      w.conn.close()
    self._workers = []

  def _replace(self, i: int, queue: collections.deque) -> None:
    old = self._workers[i]
    queue.extendleft(reversed(old.tasks))  # the answers it had not started, in their order.
    if old.process.is_alive():
      old.process.kill()
    old.process.join()
    old.conn.close()
    self._workers[i] = self._spawn()
    self.restarts += 1

  def _receive(self, i: int, results: list[Verdict | None], queue: collections.deque) -> None:
    """Takes every message waiting from worker i."""
    w = self._workers[i]
    while True:
      try:
        if not w.conn.poll():
          return
        message = w.conn.recv()
      except (EOFError, OSError):  # the worker died (mid-answer or during start-up).
        if w.tasks:
          results[w.tasks.popleft()] = Verdict.ERROR
        elif not w.ready:
          # One killed worker is replaced like any other; a worker that cannot start at all is a bug.
          self._startup_failures += 1
          if self._startup_failures > _MAX_STARTUP_FAILURES:
            raise RuntimeError(f"reward workers died during start-up {self._startup_failures} times in a row "
                               f"(last exit code {w.process.exitcode})") from None
        self._replace(i, queue)
        return
      if not w.ready:
        w.ready = message == _worker.READY
        self._startup_failures = 0
        continue
      results[w.tasks.popleft()] = Verdict(message)
      w.deadline = time.perf_counter() + self.timeout_s  # the next answer starts now.

  def _poll(self, results: list[Verdict | None], queue: collections.deque) -> None:
    """Waits for the next event (a result, a ready signal, a deadline) and handles all that happened."""
    waiting = [w for w in self._workers if w.tasks or not w.ready]
    if not waiting:
      return
    next_deadline = min(w.deadline if w.ready else w.ready_by for w in waiting)
    ready_conns = multiprocessing.connection.wait(
        [w.conn for w in waiting], timeout=max(0.0, next_deadline - time.perf_counter()))
    for i, w in enumerate(self._workers):
      if w.conn in ready_conns:
        self._receive(i, results, queue)
    now = time.perf_counter()
    for i, w in enumerate(self._workers):
      if w.tasks and now >= w.deadline:
        results[w.tasks.popleft()] = Verdict.TIMEOUT
        self._replace(i, queue)
      elif not w.ready and now >= w.ready_by:
        raise RuntimeError(f"reward worker {i} not ready after {self.startup_timeout_s} s")

  def score(self, responses: Sequence[str], ground_truths: Sequence[GroundTruth], *,
            variant: Variant = Variant.HPT_V6) -> BatchScores:
    """Scores a batch; every answer gets a verdict within about `timeout_s` of starting to be graded.

    Args:
      responses: N decoded responses.
      ground_truths: N ground truths (string/number or a list of them).
      variant: which reward function (see `Variant`).
    """
    start = time.perf_counter()
    truths = _check_inputs(responses, ground_truths)
    self.start()
    results: list[Verdict | None] = [None] * len(responses)
    queue = collections.deque(range(len(responses)))
    while queue or any(w.tasks for w in self._workers):
      for i, w in enumerate(self._workers):
        while w.ready and queue and len(w.tasks) < self.prefetch:
          task = queue.popleft()
          try:
            w.conn.send((responses[task], truths[task], variant.value))
          except (OSError, ValueError):  # died while idle: requeue the answer, replace the worker.
            queue.appendleft(task)
            self._replace(i, queue)
            break
          if not w.tasks:
            w.deadline = time.perf_counter() + self.timeout_s
          w.tasks.append(task)
      self._poll(results, queue)
    return _pack(results, start)
