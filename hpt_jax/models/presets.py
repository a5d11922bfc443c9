"""Named model configurations: the three base models HPT post-trains, and the project's tiny model.

The real presets restate the published `config.json` files kept in `third_party/<model>/` (see the
PROVENANCE notes there); `tests/test_models_presets.py` checks that `ModelConfig.from_hf_config` of
each file equals its preset and that parameter counts equal the published ones. Every constructor
takes `**overrides` (e.g. `dtype_policy=DTypePolicy.BFLOAT16`, `remat=RematPolicy.FULL`).
"""

from __future__ import annotations

from typing import Callable, Mapping

from hpt_jax.models.config import Llama3RopeScaling, ModelConfig, ModelFamily


def _build(fields: dict, overrides: dict) -> ModelConfig:
  return ModelConfig(**{**fields, **overrides})


def tiny(**overrides) -> ModelConfig:
  """The project's tiny Qwen2 (tests, the built-in arithmetic task): 2,952,960 parameters."""
  return _build(dict(
      family=ModelFamily.QWEN2, vocab_size=512, hidden_size=256, intermediate_size=704,
      num_layers=4, num_heads=8, num_kv_heads=2, head_dim=32, rope_theta=10000.0,
      max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=True, qkv_bias=True,
  ), overrides)


def qwen25_math_1_5b(**overrides) -> ModelConfig:
  """Qwen/Qwen2.5-Math-1.5B as published: 1,543,714,304 parameters, tied embeddings."""
  return _build(dict(
      family=ModelFamily.QWEN2, vocab_size=151936, hidden_size=1536, intermediate_size=8960,
      num_layers=28, num_heads=12, num_kv_heads=2, head_dim=128, rope_theta=10000.0,
      max_position_embeddings=4096, rms_norm_eps=1e-6, tie_word_embeddings=True, qkv_bias=True,
      bos_token_id=151643, eos_token_id=151643,
  ), overrides)


def qwen25_math_7b(**overrides) -> ModelConfig:
  """Qwen/Qwen2.5-Math-7B as published: 7,615,616,512 parameters, untied embeddings."""
  return _build(dict(
      family=ModelFamily.QWEN2, vocab_size=152064, hidden_size=3584, intermediate_size=18944,
      num_layers=28, num_heads=28, num_kv_heads=4, head_dim=128, rope_theta=10000.0,
      max_position_embeddings=4096, rms_norm_eps=1e-6, tie_word_embeddings=False, qkv_bias=True,
      bos_token_id=151643, eos_token_id=151643,
  ), overrides)


def qwen25_math_7b_hpt(**overrides) -> ModelConfig:
  """Qwen2.5-Math-7B as HPT trains it: "Following LUFFY, rope_theta should be reset to 40000 and
  max_position_embeddings to 16384" (HPT train.sh; PAPER.md §3). Same weights as `qwen25_math_7b`."""
  return qwen25_math_7b(**{"rope_theta": 40000.0, "max_position_embeddings": 16384, **overrides})


def llama31_8b(**overrides) -> ModelConfig:
  """meta-llama/Llama-3.1-8B as published: 8,030,261,248 parameters, llama3 RoPE scaling."""
  return _build(dict(
      family=ModelFamily.LLAMA, vocab_size=128256, hidden_size=4096, intermediate_size=14336,
      num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128, rope_theta=500000.0,
      max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=False,
      qkv_bias=False, o_bias=False,
      rope_scaling=Llama3RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                     original_max_position_embeddings=8192),
      bos_token_id=128000, eos_token_id=128001,
  ), overrides)


PRESETS: Mapping[str, Callable[..., ModelConfig]] = {
    "tiny": tiny,
    "qwen2.5-math-1.5b": qwen25_math_1_5b,
    "qwen2.5-math-7b": qwen25_math_7b,
    "qwen2.5-math-7b-hpt": qwen25_math_7b_hpt,
    "llama-3.1-8b": llama31_8b,
}


def get(name: str, **overrides) -> ModelConfig:
  """The preset called `name` (a key of PRESETS), with field overrides."""
  if name not in PRESETS:
    raise KeyError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
  return PRESETS[name](**overrides)
