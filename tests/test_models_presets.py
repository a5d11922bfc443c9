"""Presets vs the published config.json files, parameter counts, config translation, RoPE, memory."""

import json
import math
import pathlib

import numpy as np
import pytest
import transformers
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from hpt_jax.models import DTypePolicy, ModelConfig, RematPolicy, memory, presets, rope

THIRD_PARTY = pathlib.Path(__file__).resolve().parents[1] / "third_party"

# Published parameter counts (model cards / safetensors metadata); also re-derived by hand below.
PUBLISHED = {
    "qwen2.5-math-1.5b": ("Qwen2.5-Math-1.5B", 1_543_714_304),
    "qwen2.5-math-7b": ("Qwen2.5-Math-7B", 7_615_616_512),
    "llama-3.1-8b": ("Llama-3.1-8B", 8_030_261_248),
}


def _hand_count(c: ModelConfig) -> int:
  """V D (+ D V untied) + D + L (attention + biases + SwiGLU + 2 norms)."""
  attn = c.hidden_size * (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
  attn += c.num_heads * c.head_dim * c.hidden_size
  bias = (c.num_heads + 2 * c.num_kv_heads) * c.head_dim if c.qkv_bias else 0
  layer = attn + bias + 3 * c.hidden_size * c.intermediate_size + 2 * c.hidden_size
  embed = c.vocab_size * c.hidden_size * (1 if c.tie_word_embeddings else 2)
  return embed + c.hidden_size + c.num_layers * layer


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_matches_third_party_config_and_published_count(name):
  folder, published = PUBLISHED[name]
  hf = json.loads((THIRD_PARTY / folder / "config.json").read_text())
  assert (THIRD_PARTY / folder / "PROVENANCE.md").is_file()
  config = presets.get(name)
  assert ModelConfig.from_hf_config(hf) == config
  assert _hand_count(config) == published
  assert memory.param_count(config) == published  # jax.eval_shape: nothing allocated


def test_hpt_7b_variant_only_changes_rope():
  stock, hpt = presets.qwen25_math_7b(), presets.qwen25_math_7b_hpt()
  assert (hpt.rope_theta, hpt.max_position_embeddings) == (40000.0, 16384)
  assert hpt.replace(rope_theta=stock.rope_theta, max_position_embeddings=4096) == stock
  with pytest.raises(KeyError, match="unknown model preset 'gpt2'"):
    presets.get("gpt2")


def test_hf_config_round_trip_through_transformers():
  # to_hf_config -> transformers config (writes its own v5 layout: rope_parameters) -> back.
  for config in (presets.llama31_8b(), presets.qwen25_math_7b_hpt(), presets.tiny()):
    hf = transformers.AutoConfig.for_model(**config.to_hf_config()).to_dict()
    assert "rope_parameters" in hf
    assert ModelConfig.from_hf_config(hf) == config


def test_bad_config_fields_are_named():
  hf = presets.tiny().to_hf_config()
  with pytest.raises(ValueError, match="missing required key 'hidden_size'"):
    ModelConfig.from_hf_config({k: v for k, v in hf.items() if k != "hidden_size"})
  with pytest.raises(ValueError, match="rope type 'yarn'"):
    ModelConfig.from_hf_config({**hf, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
  with pytest.raises(ValueError, match="num_kv_heads"):
    presets.tiny(num_kv_heads=3)


def test_llama3_inverse_frequencies_match_transformers_and_hand_formula():
  config = presets.llama31_8b()
  ours = np.asarray(rope.inverse_frequencies(head_dim=config.head_dim, theta=config.rope_theta,
                                             scaling=config.rope_scaling))
  hf_config = transformers.AutoConfig.for_model(**config.to_hf_config())
  ref, scale = ROPE_INIT_FUNCTIONS["llama3"](hf_config, "cpu")
  assert scale == 1.0
  np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-6)
  # Hand formula (Meta's apply_scaling) in float64, band by band.
  base = 1.0 / 500000.0 ** (np.arange(0, 128, 2) / 128)
  wavelen = 2 * math.pi / base
  smooth = (8192 / wavelen - 1.0) / (4.0 - 1.0)
  want = np.where(wavelen < 8192 / 4.0, base,
                  np.where(wavelen > 8192 / 1.0, base / 8.0, (1 - smooth) * base / 8.0 + smooth * base))
  np.testing.assert_allclose(ours, want, rtol=1e-5)
  assert (wavelen < 2048).any() and (wavelen > 8192).any() and ((wavelen >= 2048) & (wavelen <= 8192)).any()


def test_memory_estimate_matches_hand_count():
  config = presets.qwen25_math_7b_hpt(dtype_policy=DTypePolicy.BFLOAT16, remat=RematPolicy.FULL)
  est = memory.estimate_memory(config, mesh_shape={"data": 1, "fsdp": 8, "tensor": 1},
                               micro_batch=8, seq_len=1024)
  # Every kernel has an `embed` dim (-> fsdp, divisible by 8); norm scales ("norm") and q/k/v biases
  # (heads -> tensor, size 1 here) are replicated: params = sharded / 8 + replicated, in bf16.
  replicated = (2 * config.num_layers + 1) * config.hidden_size
  replicated += config.num_layers * (config.num_heads + 2 * config.num_kv_heads) * config.head_dim
  want_params = 2 * ((7_615_616_512 - replicated) // 8 + replicated)
  assert est.params == want_params
  assert est.grads == want_params
  assert est.optimizer == 2 * 2 * want_params  # two float32 moments
  # FULL remat: per-layer input [1 row, 1024, D] bf16 for 28 layers is a lower bound of activations.
  assert est.activations > 28 * 1024 * 3584 * 2
  none = memory.estimate_memory(config.replace(remat=RematPolicy.NONE),
                                mesh_shape={"fsdp": 8}, micro_batch=8, seq_len=1024)
  assert none.activations > est.activations
  assert est.total == est.params + est.grads + est.optimizer + est.activations
  # Query-chunked attention: FULL-remat activations drop by exactly the unchunked minus chunked
  # float32 scores + probabilities of one layer, 2 N T (T - C) x 4 bytes for the single local row.
  chunked = memory.estimate_memory(config.replace(attention_query_chunk=256),
                                   mesh_shape={"fsdp": 8}, micro_batch=8, seq_len=1024)
  assert est.activations - chunked.activations == 2 * 28 * 1024 * (1024 - 256) * 4
