"""Flax NNX causal LM (Qwen2 / Qwen2.5 / Qwen2.5-Math, Llama 3.x) with Hugging Face import/export.

Public API (see WORKSPACE.md "Model"):
  ModelConfig, ModelFamily, DTypePolicy, RematPolicy, Llama3RopeScaling -- configuration.
  CausalLM, KVCache, init_cache                                        -- the model and its cache.
  abstract_model, init_model                                           -- shapes only / random init.
  load_pretrained, save_pretrained, CheckpointError                    -- Hugging Face directories.
  presets, sharding, memory                                            -- named configs, logical
                                                                          axes + rules, estimates.
"""

from hpt_jax.models import memory
from hpt_jax.models import presets
from hpt_jax.models import sharding
from hpt_jax.models.cache import KVCache, init_cache
from hpt_jax.models.config import (DTypePolicy, Llama3RopeScaling, ModelConfig, ModelFamily,
                                   RematPolicy)
from hpt_jax.models.factory import abstract_model, init_model
from hpt_jax.models.hf_io import CheckpointError, load_pretrained, save_pretrained
from hpt_jax.models.transformer import CausalLM

__all__ = [
    "CausalLM", "CheckpointError", "DTypePolicy", "KVCache", "Llama3RopeScaling", "ModelConfig",
    "ModelFamily", "RematPolicy", "abstract_model", "init_cache", "init_model", "load_pretrained",
    "memory", "presets", "save_pretrained", "sharding",
]
