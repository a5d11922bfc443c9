"""End-to-end runs of the training loop on a tiny model and the built-in task: metrics, checkpoints,
exact resume."""

import jax
import numpy as np
import pytest

from hpt_jax.training import loop
from hpt_jax.training.checkpoint import Checkpointer
from hpt_jax.training.metrics import read_jsonl

import test_train_loop_fixtures as fx


@pytest.fixture(scope="module")
def builtin_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("builtin_task")


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, builtin_dir):
  """4 HPT steps in one go (shared by the tests below; the compiled programs are reused)."""
  workdir = tmp_path_factory.mktemp("straight")
  config = fx.tiny_config(builtin_dir, steps=4)
  summary = loop.train(config, workdir=workdir)
  return config, workdir, summary


def _final_params(workdir, config):
  ckpt = Checkpointer(workdir / "checkpoints", config=config.checkpoint)
  step = ckpt.latest_step()
  state, _ = ckpt.restore(step)  # the saved tree as it is: values are all we compare
  ckpt.close()
  return step, state


def _comparable(records):
  # Timings differ between runs; everything else must be bit-identical.
  return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in records]


def test_hpt_steps_write_metrics_and_checkpoints(straight_run):
  config, workdir, summary = straight_run
  assert summary.steps == 4
  records = read_jsonl(workdir / "metrics.jsonl")
  assert [r["step"] for r in records] == [1, 2, 3, 4]
  for r in records:
    for key in ("reward/accuracy", "gate/sft_fraction", "gate/off_example_ratio", "train/loss",
                "train/grad_norm", "train/skipped_updates", "response/length_mean",
                "response/truncation_rate", "perf/sampling_tokens_per_s", "perf/training_tokens_per_s",
                "reward/timeouts"):
      assert np.isfinite(r[key]), key
    # HPT's gate: an RL question keeps its 4 rollouts, an SFT question contributes 1 demonstration row.
    sft = round(r["gate/sft_fraction"] * 4)
    assert r["gate/rl_rows"] == 4 * (4 - sft) and r["gate/sft_rows"] == sft
    assert r["gate/off_example_ratio"] == pytest.approx(sft / (sft + 4 * (4 - sft)))
    # 8 rows per optimizer step.
    assert r["train/optimizer_steps"] == -(-(r["gate/rl_rows"] + r["gate/sft_rows"]) // 8)
  # keep_last=2 (and no validation, so no "best").
  assert Checkpointer(workdir / "checkpoints", config=config.checkpoint).all_steps() == [3, 4]
  assert (workdir / "tensorboard").is_dir()
  assert summary.outputs["metrics"] == workdir / "metrics.jsonl"


def test_resume_reproduces_the_uninterrupted_run(straight_run, builtin_dir, tmp_path):
  config, straight_dir, _ = straight_run
  first = loop.train(config, workdir=tmp_path, stop_after_steps=2)
  assert first.steps == 2
  assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]
  second = loop.train(config, workdir=tmp_path)  # the same flags again: continues from step 2
  assert second.steps == 4
  resumed, straight = read_jsonl(tmp_path / "metrics.jsonl"), read_jsonl(straight_dir / "metrics.jsonl")
  assert _comparable(resumed) == _comparable(straight)
  step_a, state_a = _final_params(straight_dir, config)
  step_b, state_b = _final_params(tmp_path, config)
  assert step_a == step_b == 4
  leaves_a, leaves_b = jax.tree.leaves(state_a), jax.tree.leaves(state_b)
  assert len(leaves_a) == len(leaves_b) > 0
  for a, b in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
