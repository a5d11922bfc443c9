"""The end-to-end iteration benchmark's smoke version completes and reports sane figures (CI runs only this).

The smoke run is one worker process: our loop alone, then ours and trl interleaved (reusing the
programs the first run compiled), on a minuscule model; its time is imports and one compilation.
"""

import json
import pathlib
import subprocess
import sys

import pytest

_SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "bench_iteration.py"


@pytest.mark.slow  # one subprocess: imports (jax, torch, trl) and one compilation, ~40 CPU-s
def test_iteration_benchmark_smoke(tmp_path):
  out = tmp_path / "results.json"
  proc = subprocess.run([sys.executable, str(_SCRIPT), "--smoke", "--json", str(out)], capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  results = json.loads(out.read_text())
  ours, inter = results["ours"], results["interleaved"]
  w = ours["workload"]
  rows = w["prompts"] * w["rollouts"]
  # The warm iterations compiled nothing: every program came from the first iteration, and the
  # interleaved run (same process, same shapes) compiled nothing at all.
  assert ours["compiles_first"] > 0 and ours["compiles_after_first"] == 0, ours["recompiled"]
  assert inter["ours"]["compiles_first"] == 0 and inter["ours"]["compiles_after_first"] == 0
  # Our process does not import torch (the tokenizer is loaded with `tokenizers`); trl's side does.
  assert ours["torch_imported"] is False and inter["torch_imported"] is True
  for side in (ours, inter["ours"], inter["trl"]):
    assert 0 < side["warm_seconds"] and 0 < side["first_seconds"]
    assert len(side["warm_all"]) == w["iters"] - 1
    assert 0 < side["generated_tokens"] <= rows * w["new_tokens"]
    assert side["peak_rss_mib"] > 0
  # Per-iteration ratios are trl's time over ours, iteration by iteration.
  expected = [t / o for o, t in zip(inter["ours"]["warm_all"], inter["trl"]["warm_all"])]
  assert inter["wall_ratios"] == pytest.approx(expected)
  # Our split accounts for the iteration (host = the rest, so the parts add up to the total).
  parts = ours["split"]
  assert all(v >= 0 for k, v in parts.items() if k != "host")
  assert sum(parts.values()) == pytest.approx(ours["warm_seconds"], rel=0.5)
  assert ours["train_rows"] == rows  # the GRPO row source trains on every rollout, as trl does
  assert inter["trl"]["prompt_token_mismatches"] == 0  # trl tokenised exactly our prompts
  assert [r["workload"]["new_tokens"] for r in results["scaling_tokens"]] == [w["new_tokens"]]
  assert "speed-up ours/trl (interleaved" in proc.stdout and "scaling over tokens" in proc.stdout
  # fp32, same temperature, one mini-batch per step: no old-log-prob forward pass is configured or run.
  assert ours["old_logprob_passes"] == 0 and ours["old_logprob_recompute_configured"] is False
  floor = results["floor"]
  # Update: 3 forwards over 4 padded rows of 32 + 4 positions; the smoke model (D 64, F 128, 1 layer, 2 heads
  # and 1 KV head of 32, V 512) has 2*32*64*2 + 32*64*2 + 3*64*128 + 64*512 = 69,632 matmul weights per
  # token, and attention 4 * 36 * 64 FLOPs: 3 * (2 * 69,632 + 9,216) * 4 * 36 = 64,143,360 FLOPs.
  assert floor["update_gflop"] == pytest.approx(64_143_360 / 1e9)
  assert floor["total_gflop"] == pytest.approx(floor["sampling_gflop"] + floor["update_gflop"])
  assert floor["floor_seconds"] == pytest.approx(floor["total_gflop"] / floor["peak_gflops"])
  assert "floor: vs trl interleaved" in proc.stdout
