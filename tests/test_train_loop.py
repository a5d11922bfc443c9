"""End-to-end runs of the training loop on a tiny model and the built-in task: metrics, checkpoints,
exact resume."""

import numpy as np
import pytest

from hpt_jax.training import loop
from hpt_jax.training.checkpoint import Checkpointer
from hpt_jax.training.metrics import read_jsonl

import train_loop_fixtures as fx


@pytest.fixture(scope="module")
def builtin_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("builtin_task")


def test_hpt_steps_write_metrics_and_checkpoint(tmp_path, builtin_dir):
  config = fx.tiny_config(builtin_dir, steps=2)
  summary = loop.train(config, workdir=tmp_path)
  assert summary.steps == 2
  records = read_jsonl(tmp_path / "metrics.jsonl")
  assert [r["step"] for r in records] == [1, 2]
  for r in records:
    for key in ("reward/accuracy", "gate/sft_fraction", "gate/off_example_ratio", "train/loss",
                "train/grad_norm", "response/length_mean", "response/truncation_rate",
                "perf/sampling_tokens_per_s", "perf/training_tokens_per_s"):
      assert np.isfinite(r[key]), key
    # Rows: 4 rollouts per RL question, 1 per SFT question (HPT's gate).
    sft = round(r["gate/sft_fraction"] * 4)
    assert r["gate/rl_rows"] == 4 * (4 - sft) and r["gate/sft_rows"] == sft
  assert Checkpointer(tmp_path / "checkpoints", config=config.checkpoint).all_steps() == [1, 2]
