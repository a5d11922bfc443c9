"""The train-step benchmark's smoke run: it completes, and every side's first-step loss agrees."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"


def test_bench_train_step_smoke_losses_agree_and_shared_layout_computes_less():
  env = dict(os.environ, XLA_FLAGS="--xla_backend_optimization_level=0")
  proc = subprocess.run([sys.executable, "bench_train_step.py", "--smoke"], cwd=EXPERIMENTS, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  losses = dict(re.findall(r"(ours \(\w+\)|torch) (-?\d+\.\d+)", proc.stdout.split("first-step loss:")[1].splitlines()[0]))
  assert set(losses) == {"ours (shared)", "ours (plain)", "torch"}
  for name in ("ours (shared)", "ours (plain)"):
    assert float(losses[name]) == pytest.approx(float(losses["torch"]), abs=2e-5)
  computed = dict(re.findall(r"^(ours \(\w+\))\s*:.*computed ([\d.]+) GFLOP", proc.stdout, re.M))
  assert float(computed["ours (shared)"]) < float(computed["ours (plain)"])
