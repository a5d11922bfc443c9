"""`python -m hpt_jax.train`: impossible configurations are refused by field before anything runs."""

import os
import subprocess
import sys

import pytest

from hpt_jax import train


def test_config_names_resolve_to_shipped_files(tmp_path):
  assert train.resolve_config_path("builtin_tiny").name == "builtin_tiny.py"
  assert train.resolve_config_path("builtin_tiny").is_file()
  own = tmp_path / "mine.py"
  own.write_text("def get_config():\n  return None\n")
  assert train.resolve_config_path(str(own)) == own


_CASES = [
    (["--set", "optim.lrr=1"], "unknown config field 'optim.lrr'"),
    (["--algorithm", "ppg"], "algorithm: unknown name 'ppg'; known: "),
    (["--config", "/nonexistent/config.py"], "config: file '/nonexistent/config.py' does not exist"),
    (["--set", "batch.rows_per_micro_batch=12"], "batch.rows_per_micro_batch=12"),
    (["--set", "data.max_response_length=100000", "--set", "sampling.response_buckets=(100000,)"],
     "+ response (100000) = "),
]


def test_impossible_runs_exit_with_the_field_named_before_running(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  procs = []
  for i, (args, _) in enumerate(_CASES):
    workdir = tmp_path / f"run{i}"
    procs.append((workdir, subprocess.Popen(
        [sys.executable, "-m", "hpt_jax.train", "--workdir", str(workdir), *args], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
  for (workdir, proc), (args, message) in zip(procs, _CASES):
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, (args, err[-2000:])
    assert message in err, (args, err[-2000:])
    # Refused before anything was written or compiled.
    assert not workdir.exists(), args
