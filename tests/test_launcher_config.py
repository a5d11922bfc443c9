"""TrainConfig: shipped configs parse and validate; each impossible configuration is refused by field."""

import dataclasses
import pathlib

import pytest

from hpt_jax.training import config as c
from hpt_jax.training.overrides import ConfigError, load_config_file
from hpt_jax.upge import algorithms

import test_train_loop_fixtures as fx

_CONFIGS = sorted((pathlib.Path(__file__).parents[1] / "experiments" / "configs").glob("*.py"))


@pytest.fixture
def shipped_tiny():
  return load_config_file(pathlib.Path(__file__).parents[1] / "experiments/configs/builtin_tiny.py")


@pytest.fixture
def tiny(tmp_path):
  """A fixed config (prompt 32 + response 16 tokens, 64 positions, 4-row micro-batches, 8-row updates,
  4 prompts x 4 rollouts, 1 device), independent of how the shipped configs are tuned."""
  return fx.tiny_config(tmp_path)


@pytest.mark.parametrize("path", _CONFIGS, ids=[p.stem for p in _CONFIGS])
def test_every_shipped_config_parses(path):
  cfg = load_config_file(path)
  assert isinstance(cfg, c.TrainConfig)
  assert cfg.total_steps >= 1


def test_builtin_tiny_validates_on_8_devices(shipped_tiny):
  model = c.validate(shipped_tiny, num_devices=8)
  assert model.vocab_size == 512
  # A demonstration warm-up (what the γ = 0 gate picks while nothing is solved), then HPT.
  warmup, hpt = shipped_tiny.phases
  assert warmup.rows is c.RowSource.DEMOS
  assert hpt.rows is c.RowSource.GATE
  assert isinstance(hpt.loss.algorithm, algorithms.HptRl) and hpt.loss.sft


def test_algorithm_flag_and_overrides(tiny):
  cfg = c.build_config(tiny, algorithm="grpo", overrides=(
      "optim.learning_rate=1e-6", "phases.0.loss.algorithm.epsilon_high=0.28", "phases.0.steps=3"))
  assert isinstance(cfg.phases[0].loss.algorithm, algorithms.Grpo)
  assert cfg.phases[0].rows is c.RowSource.ROLLOUTS and not cfg.phases[0].loss.sft
  assert cfg.phases[0].loss.algorithm.epsilon_high == 0.28
  assert cfg.optim.learning_rate == 1e-6 and cfg.total_steps == 3


def test_two_phase_config_steps_map_to_phases(tiny):
  sft, grpo = c.baseline("sft", width=96), c.baseline("grpo", width=96)
  cfg = dataclasses.replace(tiny, phases=(c.Phase(loss=sft[0], rows=sft[1], steps=2),
                                          c.Phase(loss=grpo[0], rows=grpo[1], steps=3)))
  assert cfg.phases[0].rows is c.RowSource.DEMOS
  assert [cfg.phase_at(s)[0] for s in range(5)] == [0, 0, 1, 1, 1]
  with pytest.raises(ValueError, match="past the last phase"):
    cfg.phase_at(5)
  with pytest.raises(ConfigError, match=r"phases\.2"):
    c.build_config(cfg, overrides=("phases.2.steps=1",))


@pytest.mark.parametrize("overrides, field", [
    (("mesh.data=8", "batch.rows_per_micro_batch=12"), "batch.rows_per_micro_batch"),
    (("mesh.data=2", "batch.prompts_per_step=3", "sampling.rollouts_per_prompt=1"), "batch.prompts_per_step"),
    (("batch.rows_per_optimizer_step=6",), "batch.rows_per_optimizer_step"),
    (("sampling.response_buckets=(64,)", "data.max_response_length=64"), "data.max_response_length"),
    (("data.max_response_length=32",), "sampling.response_buckets"),
    (("data.train_file=/nonexistent/train.parquet",), "data.train_file"),
    (("model.hf_dir=/nonexistent/model",), "model.hf_dir"),
    (("model.tokenizer_dir=/nonexistent/tok",), "model.tokenizer_dir"),
    (("validation.file=/nonexistent/math500.jsonl",), "validation.file"),
    (("mesh.tensor=16",), "mesh"),
    (("mesh.data=8",), "batch.rows_per_micro_batch"),
    (("phases.0.loss.official_ranks=3",), "phases.0.loss.official_ranks"),
    (("sampling.temperature=0.6", "phases.0.old_logprobs=sampler"), "phases.0.old_logprobs"),
    (("sampling.dtype_policy=bfloat16", "phases.0.old_logprobs=sampler"), "phases.0.old_logprobs"),
    (("gate.gamma_fraction=0.25",), "gate"),
    (("phases.0.steps=-1",), "phases.0.steps"),
    (("optim.nonexistent=1",), "optim.nonexistent"),
    (("batch.response_granules=-1",), "batch.response_granules"),
    (("mesh.data=2", "batch.response_granules=4"), "batch.response_granules"),
])
def test_impossible_configurations_are_refused_naming_the_field(tiny, overrides, field):
  with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
    c.validate(c.build_config(tiny, overrides=overrides), num_devices=8)


def test_unknown_algorithm_lists_the_known_ones(tiny):
  with pytest.raises(ConfigError, match="algorithm.*'ppg'.*known: .*hpt"):
    c.build_config(tiny, algorithm="ppg")
  with pytest.raises(ConfigError, match="algorithm: 'ppo' cannot be run.*runnable: .*luffy"):
    c.build_config(tiny, algorithm="ppo")


@pytest.mark.parametrize("name", ["sft", "grpo", "dr_grpo", "dapo", "cispo", "gspo", "luffy", "srft", "hpt"])
def test_every_runnable_baseline_builds_and_validates(tiny, name):
  cfg = c.build_config(tiny, algorithm=name)
  c.validate(cfg, num_devices=8)
  loss = cfg.phases[0].loss
  # HPT / LUFFY / SRFT use the official constant-width normaliser at the configured response width.
  if name in ("hpt", "luffy", "srft"):
    assert loss.rl_width == tiny.data.max_response_length == loss.algorithm.width


def test_max_positions_from_hf_dir_and_rope_override(tiny, tmp_path):
  import json
  hf = tiny.model.config.to_hf_config()
  hf["max_position_embeddings"] = 40  # < 32 + 16
  (tmp_path / "config.json").write_text(json.dumps(hf))
  cfg = c.build_config(tiny, overrides=(f"model.hf_dir={tmp_path}",))
  with pytest.raises(ConfigError, match="max_position_embeddings=40"):
    c.validate(cfg, num_devices=8)
  cfg = c.build_config(cfg, overrides=("model.max_position_embeddings=4096", "model.rope_theta=40000"))
  model = c.validate(cfg, num_devices=8)
  assert (model.max_position_embeddings, model.rope_theta) == (4096, 40000.0)


def test_hf_dir_keeps_the_configured_runtime_fields(tiny, tmp_path):
  """config.json gives the architecture; dtype policy, remat and query chunk stay as configured."""
  import json
  from hpt_jax.models import DTypePolicy, RematPolicy
  hf = tiny.model.config.to_hf_config()
  hf["num_hidden_layers"] = 3  # the file's architecture must win over model.config's (1 layer)
  (tmp_path / "config.json").write_text(json.dumps(hf))
  runtime = tiny.model.config.replace(dtype_policy=DTypePolicy.BFLOAT16, remat=RematPolicy.SAVE_DOTS,
                                      attention_query_chunk=8)
  cfg = dataclasses.replace(tiny, model=c.ModelSource(config=runtime, hf_dir=tmp_path))
  model = c.validate(cfg, num_devices=8)
  assert model.num_layers == 3
  assert (model.dtype_policy, model.remat, model.attention_query_chunk) == (
      DTypePolicy.BFLOAT16, RematPolicy.SAVE_DOTS, 8)
  # Everything else is the file's: the same as parsing it with the run-time fields given explicitly.
  assert model == c.ModelConfig.from_hf_config(hf, dtype_policy=DTypePolicy.BFLOAT16,
                                               remat=RematPolicy.SAVE_DOTS, attention_query_chunk=8)
  # The same choices from the command line.
  cfg = c.build_config(tiny, overrides=(f"model.hf_dir={tmp_path}", "model.config.remat=full",
                                        "model.config.attention_query_chunk=4"))
  model = c.validate(cfg, num_devices=8)
  assert (model.remat, model.attention_query_chunk, model.num_layers) == (RematPolicy.FULL, 4, 3)


@pytest.mark.parametrize("overrides, recompute", [
    ((), False),  # the sampler's log-probs are the training policy's
    (("phases.0.old_logprobs=recompute",), True),  # asked for explicitly
    (("sampling.temperature=0.6",), True),  # π_θ at T_loss = 1 vs rollouts' log-probs at 0.6
    (("sampling.temperature=0.6", "phases.0.loss.temperature=0.6"), False),
    (("sampling.dtype_policy=bfloat16",), True),  # the sampler computes in another dtype
    (("model.config.dtype_policy=bfloat16",), True),  # same policy, but bf16 decoding != teacher forcing
    (("model.config.dtype_policy=bfloat16", "phases.0.old_logprobs=sampler"), False),  # allowed, by choice
])
def test_old_logprobs_are_recomputed_exactly_when_the_policies_differ(tiny, overrides, recompute):
  from hpt_jax.training.old_logprobs import should_recompute
  cfg = c.build_config(tiny, overrides=overrides)
  model = c.validate(cfg, num_devices=8)  # T_loss != T_sample is no longer refused
  phase = cfg.phases[0]
  assert should_recompute(phase.old_logprobs, phase.policies(model, cfg.sampling)) is recompute
