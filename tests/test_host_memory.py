"""release_free_heap returns freed heap pages: checked against the kernel's own RSS count."""

import ctypes
import ctypes.util

import pytest

from hpt_jax.training import host_memory


def _rss_kib() -> int:
  with open("/proc/self/status") as f:
    return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


@pytest.mark.skipif(host_memory._malloc_trim() is None, reason="no glibc malloc_trim")
def test_release_free_heap_lowers_rss():
  libc = ctypes.CDLL(ctypes.util.find_library("c"))
  libc.malloc.restype = ctypes.c_void_p
  libc.malloc.argtypes = [ctypes.c_size_t]
  libc.free.argtypes = [ctypes.c_void_p]
  # 64 KiB blocks stay below glibc's mmap threshold, so they come from the heap; touching them makes
  # them resident. Keeping every 16th block alive pins the heap's top, so free() alone cannot shrink
  # it: only malloc_trim can return the holes in between.
  blocks = [libc.malloc(64 * 1024) for _ in range(2048)]  # 128 MiB
  for b in blocks:
    ctypes.memset(b, 1, 64 * 1024)
  for i, b in enumerate(blocks):
    if i % 16:
      libc.free(b)
  before = _rss_kib()
  assert host_memory.release_free_heap()
  released_mib = (before - _rss_kib()) / 1024
  for i, b in enumerate(blocks):
    if not i % 16:
      libc.free(b)
  assert released_mib > 64, f"only {released_mib:.0f} MiB of ~120 MiB free heap was released"


def test_trim_after_compiles_trims_after_long_compiles_only():
  import jax
  import jax.numpy as jnp

  listener = host_memory.trim_after_compiles(min_seconds=1e9)  # nothing compiles that long
  before = listener.trims
  jax.jit(lambda x: jnp.sin(x) * 3.0)(jnp.ones((5,))).block_until_ready()
  assert listener.trims == before
  x = jnp.ones((7,))  # made before: its own (eager) compilation must not count below
  assert host_memory.trim_after_compiles(min_seconds=0.0) is listener  # installed once, threshold lowered
  jax.jit(lambda x: jnp.cos(x) * 5.0)(x).block_until_ready()  # a new program: one compile
  assert listener.trims == before + 1
  with pytest.raises(ValueError, match="min_seconds"):
    host_memory.trim_after_compiles(min_seconds=-1.0)
