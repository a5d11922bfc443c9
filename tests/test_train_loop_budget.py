"""`training_token_budget`: a tiny SFT run stops at the first step whose cumulative training tokens
reach the budget, and the counts agree with an independent one.

References: the tokens of one epoch of SFT rows counted from the tokenized dataset (prompt + EOS-ended
demonstration lengths, no packing involved); the optimizer's token clock (counted on device from the
packed batch's attention mask) in the final checkpoint; and an unbudgeted run of the same config.
"""

import dataclasses

import numpy as np
import pytest

from hpt_jax.training import config as c
from hpt_jax.training import loop
from hpt_jax.training.checkpoint import Checkpointer
from hpt_jax.training.metrics import read_jsonl
from hpt_jax.training.optimizer import Schedule, ScheduleUnit

import test_train_loop_fixtures as fx

QUESTIONS = 32  # level-1 training questions: one epoch is 8 steps of 4


def _config(builtin_dir, *, steps, budget=None):
  # One optimizer for every run here (one compilation): a token-clock schedule.
  optim = c.OptimConfig(learning_rate=1e-2, weight_decay=0.0, skip_above_norm=None,
                        schedule=Schedule.WARMUP_COSINE, warmup_steps=100, total_steps=2000,
                        schedule_unit=ScheduleUnit.TOKENS)
  return fx.tiny_config(builtin_dir, steps=steps, algorithm="sft", optim=optim, training_token_budget=budget,
                        data=dataclasses.replace(fx.tiny_config(builtin_dir).data, builtin_problems=QUESTIONS),
                        checkpoint=c.CheckpointConfig(every_steps=1, keep_last=1, keep_best=1, export_hf=True))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  builtin_dir = tmp_path_factory.mktemp("builtin_task")
  workdir = tmp_path_factory.mktemp("epoch")
  config = _config(builtin_dir, steps=QUESTIONS // 4)
  loop.train(config, workdir=workdir)
  return builtin_dir, config, workdir, read_jsonl(workdir / "metrics.jsonl")


def _token_clock(workdir, config):
  ckpt = Checkpointer(workdir / "checkpoints", config=config.checkpoint)
  state, host = ckpt.restore(ckpt.latest_step())
  ckpt.close()
  clocks = [leaf for leaf in _walk(state["opt_state"]) if isinstance(leaf, dict) and set(leaf) == {"tokens"}]
  return float(np.asarray(clocks[0]["tokens"])), host


def _walk(tree):
  yield tree
  children = tree.values() if isinstance(tree, dict) else tree if isinstance(tree, (list, tuple)) else ()
  for child in children:
    yield from _walk(child)


def test_epoch_token_count_matches_the_dataset(reference):
  builtin_dir, config, workdir, records = reference
  from hpt_jax.training.data_source import load_training_data
  data = load_training_data(config, workdir)
  try:
    ds = data.dataset
    assert len(ds) == QUESTIONS  # the 8 steps are exactly one epoch: every question once
    expected = sum(len(p) + len(t) for p, t in zip(ds.prompt_tokens, ds.target_tokens))
  finally:
    data.close()
  per_step = [r["train/tokens"] for r in records]
  assert sum(per_step) == expected
  np.testing.assert_array_equal([r["train/tokens_total"] for r in records], np.cumsum(per_step))
  clock, host = _token_clock(workdir, config)
  assert clock == expected and host["training_tokens"] == expected


@pytest.mark.parametrize("extra, stop", [(0, 2), (1, 3)])
def test_budget_stops_at_the_first_step_that_reaches_it(reference, tmp_path, extra, stop):
  builtin_dir, _, _, ref_records = reference
  budget = int(ref_records[1]["train/tokens_total"]) + extra  # reached exactly at step 2, or just past it
  config = _config(builtin_dir, steps=QUESTIONS // 4, budget=budget)
  summary = loop.train(config, workdir=tmp_path)
  records = read_jsonl(tmp_path / "metrics.jsonl")
  assert summary.steps == stop and [r["step"] for r in records] == list(range(1, stop + 1))
  assert records[-1]["train/tokens_total"] >= budget > records[-2]["train/tokens_total"]
  # The same steps as the unbudgeted run (same seed and data), and the export of the last one.
  assert [r["train/tokens"] for r in records] == [r["train/tokens"] for r in ref_records[:stop]]
  assert (tmp_path / "hf_final" / "config.json").is_file()
  clock, host = _token_clock(tmp_path, config)
  assert clock == records[-1]["train/tokens_total"] == host["training_tokens"]
  # Rerunning the finished run resumes at the budget and trains nothing more.
  again = loop.train(config, workdir=tmp_path)
  assert again.steps == stop and len(read_jsonl(tmp_path / "metrics.jsonl")) == stop


def test_budget_is_validated():
  with pytest.raises(c.ConfigError, match="training_token_budget"):
    c.validate(dataclasses.replace(fx.tiny_config(None), training_token_budget=0), num_devices=1)
