"""Where the benchmarks' PyTorch peer runs: `BENCH_TORCH_DEVICE` (default `cpu`; `cuda` on a GPU machine).

The peer must run on the same kind of chip as our JAX code for a ratio to mean anything, so the GPU runs
set `BENCH_TORCH_DEVICE=cuda` (JAX picks the GPU by itself). On GPU both sides use TF32 for float32
matmuls: JAX does by default, torch after `set_float32_matmul_precision("high")`.
"""

import os

import torch

DEVICE = torch.device(os.environ.get("BENCH_TORCH_DEVICE", "cpu"))
if DEVICE.type == "cuda":
  torch.set_float32_matmul_precision("high")  # TF32, as JAX's default float32 precision on GPU


def synchronize() -> None:
  """Waits for queued GPU work, so that a wall-clock timer measures it (no-op on CPU)."""
  if DEVICE.type == "cuda":
    torch.cuda.synchronize()
