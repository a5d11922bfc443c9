"""End-to-end runs of the training loop on a tiny model and the built-in task: metrics, checkpoints,
exact resume."""

import jax
import numpy as np
import pytest

from hpt_jax.training import config as c
from hpt_jax.training import loop
from hpt_jax.training.checkpoint import Checkpointer
from hpt_jax.training.metrics import read_jsonl

import test_train_loop_fixtures as fx


@pytest.fixture(scope="module")
def builtin_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("builtin_task")


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, builtin_dir):
  """4 HPT steps in one go, validated every 2 steps and exported (shared by the tests below; the
  compiled programs are reused)."""
  workdir = tmp_path_factory.mktemp("straight")
  config = fx.tiny_config(
      builtin_dir, steps=4, validation=c.ValidationConfig(every_steps=2, num_problems=4),
      checkpoint=c.CheckpointConfig(every_steps=1, keep_last=2, keep_best=1, export_hf=True))
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
    # Mean token entropy of the responses: a proper entropy of the model's next-token distribution.
    assert 0.0 < r["train/entropy"] <= np.log(config.model.config.vocab_size) + 1e-6
    # HPT's gate: an RL question keeps its 4 rollouts, an SFT question contributes 1 demonstration row.
    sft = round(r["gate/sft_fraction"] * 4)
    assert r["gate/rl_rows"] == 4 * (4 - sft) and r["gate/sft_rows"] == sft
    assert r["gate/off_example_ratio"] == pytest.approx(sft / (sft + 4 * (4 - sft)))
    # 8 rows per optimizer step.
    assert r["train/optimizer_steps"] == -(-(r["gate/rl_rows"] + r["gate/sft_rows"]) // 8)
  # Validation at steps 2 and 4 (4 held-out problems, 1 sample each).
  val = {r["step"]: r["val/accuracy"] for r in records if "val/accuracy" in r}
  assert sorted(val) == [2, 4] and all(v in (0.0, 0.25, 0.5, 0.75, 1.0) for v in val.values())
  # keep_last=2 plus the best validated step (ties keep the later one).
  best = 2 if val[2] > val[4] else 4
  assert Checkpointer(workdir / "checkpoints", config=config.checkpoint).all_steps() == sorted({3, 4, best})
  assert (workdir / "tensorboard").is_dir()
  assert summary.outputs["metrics"] == workdir / "metrics.jsonl"
  # The final model is exported as an HF directory holding exactly the final parameters.
  from flax import nnx
  from hpt_jax.models import hf_io
  assert summary.outputs["hf_final"] == workdir / "hf_final" and (workdir / "hf_best").is_dir()
  assert (workdir / "hf_final" / "tokenizer.json").is_file()
  exported = nnx.to_pure_dict(nnx.state(hf_io.load_pretrained(workdir / "hf_final"), nnx.Param))
  _, state = _final_params(workdir, config)
  for a, b in zip(jax.tree.leaves(exported), jax.tree.leaves(state["params"]), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


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


@pytest.mark.slow
def test_sft_then_grpo_runs_as_two_phases_of_one_loop(builtin_dir, tmp_path):
  import dataclasses
  sft, grpo = c.baseline("sft", width=16), c.baseline("grpo", width=16)
  config = dataclasses.replace(fx.tiny_config(builtin_dir), phases=(
      c.Phase(loss=sft[0], rows=sft[1], steps=1), c.Phase(loss=grpo[0], rows=grpo[1], steps=1)))
  summary = loop.train(config, workdir=tmp_path)
  assert summary.steps == 2
  first, second = read_jsonl(tmp_path / "metrics.jsonl")
  # Phase 0 (SFT): demonstrations only, nothing sampled. Phase 1 (GRPO): 4 x 4 rollouts, no demos.
  assert (first["train/phase"], first["gate/sft_rows"], first["gate/rl_rows"]) == (0.0, 4.0, 0.0)
  assert "reward/accuracy" not in first
  assert (second["train/phase"], second["gate/sft_rows"], second["gate/rl_rows"]) == (1.0, 0.0, 16.0)
  assert second["train/optimizer_steps"] == 2.0 and np.isfinite(second["train/loss"])
