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
  # The smoke model (D 64, F 128, 1 layer, 2 heads and 1 KV head of 32, V 512) has 2*32*64*2 + 32*64*2 +
  # 3*64*128 = 36,864 layer matmul weights per slot and an LM head of 64*512 = 32,768; attention costs
  # 4 * 64 FLOPs per (query, key). Plain rows: 3 forwards over 4 padded rows of 32 + 4 positions,
  # 3 * (2 * 69,632 + 4 * 36 * 64) * 4 * 36 = 64,143,360 FLOPs.
  assert floor["plain_rows_update_gflop"] == pytest.approx(64_143_360 / 1e9)
  # Ours, shared prompts (the loop's default): 2 micro-batches, each one prompt (32 prefix slots) and
  # its 2 rollouts' 4 response slots; the LM head over the response slots only; a prefix query attends
  # 32 keys, a response query 36: 3 * 2 * (2 * 36,864 * (32 + 8) + 2 * 32,768 * 8
  # + 256 * (32 * 32 + 8 * 36)) = 22,855,680 FLOPs.
  assert ours["shared_prompts"] is True
  assert ours["update_shapes"] == [{"m": 2, "bm": 2, "gp": 1, "p": 32, "r": 4}]
  assert floor["update_gflop"] == pytest.approx(22_855_680 / 1e9)
  assert floor["total_gflop"] == pytest.approx(floor["sampling_gflop"] + floor["update_gflop"])
  assert floor["floor_seconds"] == pytest.approx(floor["total_gflop"] / floor["peak_gflops"])
  assert "floor: vs trl interleaved" in proc.stdout
