"""The end-to-end iteration benchmark's smoke version completes and reports sane figures (CI runs only this)."""

import json
import pathlib
import subprocess
import sys

import pytest

_SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "bench_iteration.py"


@pytest.mark.slow  # two compiled runs of the loop plus trl's import and one GRPOTrainer run
def test_iteration_benchmark_smoke(tmp_path):
  out = tmp_path / "results.json"
  proc = subprocess.run([sys.executable, str(_SCRIPT), "--smoke", "--json", str(out)], capture_output=True,
                        text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  results = json.loads(out.read_text())
  ours, trl = results["ours"], results["trl"]
  w = ours["workload"]
  rows = w["prompts"] * w["rollouts"]
  # The warm iterations compiled nothing: every program came from the first iteration.
  assert ours["compiles_first"] > 0 and ours["compiles_after_first"] == 0, ours["recompiled"]
  for side in (ours, trl):
    assert 0 < side["warm_seconds"] and 0 < side["first_seconds"]
    assert 0 < side["generated_tokens"] <= rows * w["new_tokens"]
    assert side["peak_rss_mib"] > 0
  # Our split accounts for the iteration (host = the rest, so the parts add up to the total).
  parts = ours["split"]
  assert all(v >= 0 for k, v in parts.items() if k != "host")
  assert sum(parts.values()) == pytest.approx(ours["warm_seconds"], rel=0.5)
  assert ours["train_rows"] == rows  # the GRPO row source trains on every rollout, as trl does
  assert trl["prompt_token_mismatches"] == 0  # trl tokenised exactly our prompts
  tokens = [r["workload"]["new_tokens"] for r in results["scaling_tokens"]]
  assert tokens == [8, 16] and all(r["compiles_after_first"] == 0 for r in results["scaling_tokens"])
  assert "speed-up ours/trl" in proc.stdout
