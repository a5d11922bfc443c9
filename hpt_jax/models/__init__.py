"""Flax NNX causal LM (Qwen2 / Qwen2.5 / Qwen2.5-Math, Llama 3.x) with Hugging Face import/export.

Public API (see WORKSPACE.md "Model"):
  ModelConfig, ModelFamily, DTypePolicy, RematPolicy, Llama3RopeScaling -- configuration.
  CausalLM, KVCache, init_cache                                        -- the model and its cache.
  presets                                                              -- named configs.
  sharding                                                             -- logical axes and rules.
"""

from hpt_jax.models import presets
from hpt_jax.models import sharding
from hpt_jax.models.cache import KVCache, init_cache
from hpt_jax.models.config import (DTypePolicy, Llama3RopeScaling, ModelConfig, ModelFamily,
                                   RematPolicy)
from hpt_jax.models.transformer import CausalLM

__all__ = [
    "CausalLM", "DTypePolicy", "KVCache", "Llama3RopeScaling", "ModelConfig", "ModelFamily",
    "RematPolicy", "init_cache", "presets", "sharding",
]
