"""Named model configurations: the three base models HPT post-trains, and the project's tiny model.

The real presets reproduce the published `config.json` files kept in `third_party/<model>/` (see the
PROVENANCE notes there); `tests/test_models_presets.py` checks that `ModelConfig.from_hf_config` of
each file equals its preset, and that parameter counts equal the published ones.
"""

from __future__ import annotations

from hpt_jax.models.config import Llama3RopeScaling, ModelConfig, ModelFamily


def tiny(**overrides) -> ModelConfig:
  """The project's tiny Qwen2 (tests, the built-in arithmetic task): 2,952,960 parameters."""
  fields = dict(
      family=ModelFamily.QWEN2,
      vocab_size=512,
      hidden_size=256,
      intermediate_size=704,
      num_layers=4,
      num_heads=8,
      num_kv_heads=2,
      head_dim=32,
      rope_theta=10000.0,
      max_position_embeddings=2048,
      rms_norm_eps=1e-6,
      tie_word_embeddings=True,
      qkv_bias=True,
  )
  fields.update(overrides)
  return ModelConfig(**fields)
