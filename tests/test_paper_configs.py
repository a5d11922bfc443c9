"""Every shipped config parses, validates and builds its train state abstractly (no memory).

References: the published parameter counts of the base models (their model cards / safetensors
indices), PAPER.md §3's hyperparameter table, and AdamW's two moments per parameter.
"""

import dataclasses
import math
import pathlib
import sys

import jax
import numpy as np
import pytest

from hpt_jax.data import PromptTemplate
from hpt_jax.hybrid.objective import AdvantageEstimator, LossMode
from hpt_jax.training import config as c
from hpt_jax.training.optimizer import make_optimizer
from hpt_jax.training.overrides import load_config_file
from hpt_jax.training.state import abstract_params

REPO = pathlib.Path(__file__).resolve().parents[1]
PAPER = REPO / "experiments" / "paper"
SHIPPED = sorted(p for p in (list(PAPER.glob("*.py")) + list((REPO / "experiments" / "configs").glob("*.py")))
                 if p.name not in ("paper_recipe.py", "memory_table.py"))

# Published parameter counts (Hugging Face model cards / safetensors metadata).
PUBLISHED = {"qwen25_math_7b": 7_615_616_512, "qwen25_math_1_5b": 1_543_714_304, "llama31_8b": 8_030_261_248}


def _offline(config: c.TrainConfig) -> c.TrainConfig:
  """The config with its external files unset: the checkpoint's architecture comes from the preset."""
  return dataclasses.replace(
      config, model=dataclasses.replace(config.model, hf_dir=None),
      data=dataclasses.replace(config.data, train_file=None),
      validation=dataclasses.replace(config.validation, file=None))


def _count(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def test_shipped_configs_are_found():
  names = {p.stem for p in SHIPPED}
  assert {"builtin_tiny", "qwen25_math_7b_hpt", "qwen25_math_1_5b_hpt", "llama31_8b_hpt", "qwen25_math_7b_sft",
          "qwen25_math_7b_grpo", "qwen25_math_7b_sft_grpo", "qwen25_math_7b_luffy",
          "qwen25_math_7b_srft"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_config_validates_and_builds_abstract_state(path):
  config = _offline(c.build_config(load_config_file(path)))
  model = c.validate(config, num_devices=config.mesh.size)
  _, pure = abstract_params(model)
  params = _count(pure)
  opt_state = jax.eval_shape(make_optimizer(config.optim).init, pure)
  # AdamW holds a first and a second moment of every parameter, plus scalar counters.
  shaped = [x for x in jax.tree.leaves(opt_state) if x.ndim > 0]
  assert sum(math.prod(x.shape) for x in shaped) == 2 * params
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(pure))
  for key, count in PUBLISHED.items():
    if path.stem.startswith(key):
      assert params == count, (path.stem, params, count)


def test_paper_hyperparameters():
  """PAPER.md §3's table, read from the loaded configs."""
  load = lambda name: load_config_file(PAPER / f"{name}.py")
  q7 = load("qwen25_math_7b_hpt")
  assert (q7.batch.prompts_per_step, q7.sampling.rollouts_per_prompt) == (128, 8)
  assert (q7.data.max_prompt_length, q7.data.max_response_length) == (1024, 8192)
  assert (q7.sampling.temperature, q7.sampling.top_p) == (1.0, 1.0)
  assert (q7.optim.learning_rate, q7.optim.weight_decay, q7.optim.clip_norm) == (5e-6, 0.01, 1.0)
  assert q7.optim.skip_above_norm == 80.0
  assert (q7.total_steps, q7.validation.every_steps, q7.checkpoint.every_steps) == (500, 10, 50)
  assert (q7.model.rope_theta, q7.model.max_position_embeddings) == (40000.0, 16384)
  resolved = c.resolve_model_config(dataclasses.replace(q7.model, hf_dir=None))
  assert (resolved.rope_theta, resolved.max_position_embeddings) == (40000.0, 16384)
  loss = q7.phases[0].loss
  assert (loss.entropy_coeff, loss.rl_width, loss.mode, loss.advantage, loss.sft) == (
      0.001, 8192, LossMode.OFFICIAL, AdvantageEstimator.DR_GRPO, True)
  assert q7.phases[0].rows is c.RowSource.GATE and q7.gate.build().threshold.count == 0
  llama = load("llama31_8b_hpt")
  assert llama.gate.gamma_count == 2 and llama.data.template is PromptTemplate.LLAMA_ZERO
  assert llama.optim.skip_above_norm is None
  for name in ("qwen25_math_7b_luffy", "qwen25_math_7b_srft"):
    cfg = load(name)
    assert cfg.optim.learning_rate == 1e-6
    assert cfg.phases[0].rows is c.RowSource.ROLLOUTS_AND_DEMOS
  assert load("qwen25_math_7b_sft").phases[0].rows is c.RowSource.DEMOS
  assert load("qwen25_math_7b_grpo").phases[0].rows is c.RowSource.ROLLOUTS
  two = load("qwen25_math_7b_sft_grpo")
  assert [p.rows for p in two.phases] == [c.RowSource.DEMOS, c.RowSource.ROLLOUTS]


def test_memory_table_fits_pods():
  """The memory script's rollout and train-step peaks for the 7B on a v6e-64, against a hand count of
  the dominant terms (fp32 state sharded 64 ways; bf16 KV of 16 rows × 9,216 slots)."""
  sys.path.insert(0, str(PAPER))
  import memory_table as mt  # noqa: E402
  config = mt.r.recipe(mt.r.Base.QWEN_7B, mt.r.Method.HPT, platform="v6e-64")
  p = mt.peaks(config)
  n = PUBLISHED["qwen25_math_7b"]
  assert p.state == pytest.approx(16 * n / 64 / 2**30, rel=0.02)  # params + grads + 2 moments, fp32
  kv = 2 * 28 * 16 * 9216 * 4 * 128 * 2 / 2**30  # K and V, layers, rows/chip, slots, kv heads, dim, bf16
  assert p.kv_cache == pytest.approx(kv, rel=1e-6)
  assert max(p.train, p.rollout) < 0.9 * mt.r.MESHES["v6e-64"].hbm_gib
