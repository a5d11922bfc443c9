"""The loop on the shared-prompt layout (each distinct prompt once per micro-batch, the default) equals
the same run on plain `prompt ++ response` rows (`--set batch.shared_prompts=false`).

Reference: the plain-rows run, an independent code path up to the hidden states (the model's causal
forward over every row vs `models.shared_prefix`). Both runs see the same data, seeds and rewards
(`lenient_scorer`, so the HPT gate yields RL and demonstration rows in one update); the loss runs at
T = 0.8 while rollouts are drawn at T = 1, so every update after a step's first recomputes π_old, in the
run's own layout. Same metrics (token counts exactly: the token budget counts prompt + response tokens
in both layouts) and the same parameters within float tolerance. Also: which layout each phase packs.
"""

import dataclasses

import jax
import numpy as np
import pytest

from hpt_jax.training import config as c
from hpt_jax.training import loop
from hpt_jax.training.checkpoint import Checkpointer
from hpt_jax.training.mesh import MeshConfig
from hpt_jax.training.metrics import read_jsonl
from hpt_jax.training.overrides import apply_overrides

import test_train_loop_fixtures as fx


def _config(builtin_dir, algorithm: str) -> c.TrainConfig:
  """2 steps of 4 prompts x 4 rollouts, 8-row updates of 4-row micro-batches on a data=2 mesh."""
  # Adam's ε at 1e-3, not 1e-8: an entry whose gradient is ~0 (float noise of the summation order)
  # would otherwise move by ±lr in one run and not the other, whatever the layout.
  config = fx.tiny_config(builtin_dir, steps=2, algorithm=algorithm, mesh=MeshConfig(data=2),
                          optim=c.OptimConfig(learning_rate=1e-2, weight_decay=0.0, eps=1e-3, skip_above_norm=None))
  phase = config.phases[0]
  return dataclasses.replace(config, phases=(dataclasses.replace(
      phase, loss=dataclasses.replace(phase.loss, temperature=0.8)),))


def _run(config, workdir):
  loop.train(config, workdir=workdir, data=fx.multiprocess_data(config, workdir))
  ckpt = Checkpointer(workdir / "checkpoints", config=config.checkpoint)
  state, _ = ckpt.restore(ckpt.latest_step())
  ckpt.close()
  return read_jsonl(workdir / "metrics.jsonl"), state["params"]


# HPT mixes RL groups and one-row demonstrations in a micro-batch, so it covers both kinds of rows; whole
# GRPO groups (the exact Gp = Bm / n case) are covered by the train-step tests and the iteration bench's smoke
# run, and a GRPO run here would add two more runs (~60 s) to the suite.
@pytest.mark.parametrize("algorithm", ["hpt"])
def test_shared_prompt_run_equals_the_plain_run(tmp_path_factory, algorithm):
  builtin_dir = tmp_path_factory.mktemp("builtin")
  shared_config = _config(builtin_dir, algorithm)
  plain_config = apply_overrides(shared_config, ("batch.shared_prompts=false",))
  assert shared_config.batch.shared_prompts and not plain_config.batch.shared_prompts
  shared, shared_params = _run(shared_config, tmp_path_factory.mktemp("shared"))
  plain, plain_params = _run(plain_config, tmp_path_factory.mktemp("plain"))
  assert [r["step"] for r in shared] == [r["step"] for r in plain] == [1, 2]
  for s, p in zip(shared, plain):
    # The same rollouts, rewards and gate decisions (the sampler saw the same parameters).
    for key in ("reward/accuracy", "gate/rl_rows", "gate/sft_rows", "train/optimizer_steps", "train/tokens",
                "train/tokens_total", "train/batch_response_tokens", "train/recomputed_old_logp_batches"):
      assert s[key] == p[key], key
    assert s["train/recomputed_old_logp_batches"] > 0  # π_old recomputed in each run's layout
    if algorithm == "hpt":
      assert s["gate/rl_rows"] > 0 and s["gate/sft_rows"] > 0  # mixed micro-batches
    # The update: every loss term, gradient norm, entropy and algorithm metric, up to float
    # summation order.
    assert s.keys() == p.keys()
    for key in sorted(k for k in p if k.startswith("train/")):
      np.testing.assert_allclose(s[key], p[key], rtol=1e-6, atol=1e-7, err_msg=key)
  # The token clock counts prompt + response tokens of every row: rows of 4 prompts x 4 rollouts of
  # <= 16 tokens after prompts of <= 32 tokens, more than the responses alone.
  assert shared[0]["train/tokens"] > shared[0]["train/batch_response_tokens"] * shared[0]["train/optimizer_steps"]
  leaves_s, leaves_p = jax.tree.leaves(shared_params), jax.tree.leaves(plain_params)
  assert len(leaves_s) == len(leaves_p) > 0
  # Measured: |Δ| <= 1.3e-7 between the runs, where the two updates moved parameters by up to 0.037.
  for a, b in zip(leaves_s, leaves_p):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)


def test_each_phase_packs_its_layout():
  base = fx.tiny_config(None, mesh=MeshConfig(data=2))
  # 32-row micro-batches of 8 rollouts per prompt, on a mesh of 2 batch shards.
  config = dataclasses.replace(base, sampling=dataclasses.replace(base.sampling, rollouts_per_prompt=8),
                               batch=c.BatchConfig(prompts_per_step=16, rows_per_optimizer_step=128,
                                                   rows_per_micro_batch=32))
  layouts = {}
  for rows in c.RowSource:
    layout = loop.pack_config(config, dataclasses.replace(config.phases[0], rows=rows), pad_id=0).shared_prompts
    layouts[rows] = layout and layout.prefix_slot_multiple
    assert layout is None or (layout.prompt_buckets, layout.response_buckets) == ((32,), (16,))
  # Whole groups: exactly the 32 / 8 = 4 prompts of a micro-batch; mixed rows: at most 4 sizes of
  # Gp (8, 16, 24, 32); demonstrations only: plain rows.
  assert layouts == {c.RowSource.ROLLOUTS: 4, c.RowSource.GATE: 8, c.RowSource.ROLLOUTS_AND_DEMOS: 8,
                     c.RowSource.DEMOS: None}
  # The prefix slots are sharded like the rows: a multiple of the batch shards (here 8 = data 4 x fsdp 2).
  wide = dataclasses.replace(config, mesh=MeshConfig(data=4, fsdp=2))
  assert loop.pack_config(wide, config.phases[0], pad_id=0).shared_prompts.prefix_slot_multiple == 8
  rollouts = dataclasses.replace(config.phases[0], rows=c.RowSource.ROLLOUTS)
  assert loop.pack_config(wide, rollouts, pad_id=0).shared_prompts.prefix_slot_multiple == 8
  off = dataclasses.replace(config, batch=dataclasses.replace(config.batch, shared_prompts=False))
  assert loop.pack_config(off, config.phases[0], pad_id=0).shared_prompts is None
  assert loop.pack_config(off, config.phases[0], pad_id=0).length_buckets == (48,)


def test_response_granules_reach_every_phase_step(tmp_path):
  """`batch.response_granules` configures the steps the loop trains with (the packed step itself is
  checked against the unpacked one in test_train_step_shared_prompts.py)."""
  base = fx.tiny_config(tmp_path / "builtin", mesh=MeshConfig(data=1))
  config = dataclasses.replace(base, batch=dataclasses.replace(base.batch, response_granules=3))
  run = loop._Run(config, tmp_path / "run", None)
  try:
    assert [s.response_granules for s in run.steps] == [3] * len(config.phases)
  finally:
    run.data.close()
