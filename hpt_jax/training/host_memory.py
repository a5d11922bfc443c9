"""Give the host heap's free pages back to the operating system (glibc `malloc_trim`).

XLA compiles on the host with the C allocator: a program's compilation frees most of what it
allocated, but glibc keeps freed pages of its heaps (one per thread arena) mapped, so the process's
resident set stays at the compile's high-water mark. Measured on the 2-core CPU box with
`experiments/bench_iteration.py`: after the first iteration (sampler and train step compiled) RSS is
907 MiB while the live JAX arrays are 34 MiB; `malloc_trim(0)` brings RSS to 662 MiB. Each train step
then maps its XLA temp buffer (hundreds of MiB) on top of that, so the peak RSS is the trimmed size
plus the step's temp, not the compile's leftovers plus the step's temp.

The peak is reached while a freshly compiled program first runs, so the trim must come between its
compilation and its execution: `trim_after_compiles()` makes every XLA compilation that took at least
`min_seconds` (the big programs: sampler, train step; not the many sub-second eager-op programs)
trim on its way out, in the thread that compiled, before the program is launched.

Trimming costs a walk over the free lists (17 ms for 120 MiB of holes, 0.1 ms when little is free);
on an allocator without `malloc_trim` (musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

import jax

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@functools.lru_cache(maxsize=1)
def _malloc_trim():
  """glibc's `int malloc_trim(size_t pad)`, or None where the C library has no such function."""
  name = ctypes.util.find_library("c")
  if name is None:
    return None
  try:
    fn = ctypes.CDLL(name).malloc_trim
  except (OSError, AttributeError):
    return None
  fn.argtypes = [ctypes.c_size_t]
  fn.restype = ctypes.c_int
  return fn


def release_free_heap() -> bool:
  """Returns the free pages of every malloc arena to the OS.

  Returns:
    True when memory was released, False when there was nothing to release or the C library has
    no `malloc_trim`.
  """
  fn = _malloc_trim()
  return bool(fn(0)) if fn is not None else False


class _TrimAfterCompile:
  """A `jax.monitoring` listener: trims after every compilation of at least `min_seconds`."""

  def __init__(self, min_seconds: float):
    self.min_seconds = min_seconds
    self.trims = 0

  def __call__(self, event: str, duration: float, **kwargs) -> None:
    del kwargs
    if event == _COMPILE_EVENT and duration >= self.min_seconds:
      release_free_heap()
      self.trims += 1


_listener: _TrimAfterCompile | None = None


def trim_after_compiles(min_seconds: float = 0.5) -> _TrimAfterCompile:
  """Installs (once per process) the listener that trims after every long compilation.

  Args:
    min_seconds: compilations shorter than this do not trim (a later call may lower it, not raise it).

  Returns:
    The listener (its `trims` counts the trims it made).
  """
  global _listener
  if min_seconds < 0:
    raise ValueError(f"trim_after_compiles: min_seconds must be >= 0, got {min_seconds}")
  if _listener is None:
    _listener = _TrimAfterCompile(min_seconds)
    jax.monitoring.register_event_duration_secs_listener(_listener)
  _listener.min_seconds = min(_listener.min_seconds, min_seconds)
  return _listener
