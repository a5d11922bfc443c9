"""The frozen model configuration, and its translation from/to a Hugging Face `config.json`.

One `ModelConfig` describes every supported decoder: Qwen2 / Qwen2.5 / Qwen2.5-Math (q/k/v biases,
usually tied embeddings for the small ones) and Llama 3.x (llama3 RoPE scaling, untied embeddings).
Field names follow our letters: `D` hidden_size, `F` intermediate_size, `L` num_layers, `N` num_heads,
`K` num_kv_heads, `H` head_dim, `V` vocab_size.

`from_hf_config` accepts both config.json layouts in circulation: the published one (`rope_theta`,
`rope_scaling` at the top level) and the transformers>=5 one (`rope_parameters`).
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Mapping

import jax
import jax.numpy as jnp


class ModelFamily(enum.Enum):
  """Supported architectures; the value is the HF `model_type`."""
  QWEN2 = "qwen2"
  LLAMA = "llama"

  @property
  def hf_architecture(self) -> str:
    return _HF_ARCHITECTURES[self]


_HF_ARCHITECTURES = {
    ModelFamily.QWEN2: "Qwen2ForCausalLM",
    ModelFamily.LLAMA: "LlamaForCausalLM",
}


class DTypePolicy(enum.Enum):
  """Parameter / activation precision. Softmax, norms and logits are float32 under every policy.

  FLOAT32 is the CPU (and parity-test) policy; BFLOAT16 is for accelerators, where bf16 matmuls are
  what the hardware is fast at and fp32 is kept only where range matters.
  """
  FLOAT32 = "float32"
  BFLOAT16 = "bfloat16"

  @property
  def dtype(self) -> jnp.dtype:
    """Activation / matmul dtype."""
    return jnp.dtype(self.value)

  @property
  def param_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.value)

  @classmethod
  def for_backend(cls, backend: str | None = None) -> "DTypePolicy":
    """float32 on CPU, bfloat16 on GPU/TPU (`backend` defaults to `jax.default_backend()`)."""
    backend = backend or jax.default_backend()
    return cls.FLOAT32 if backend == "cpu" else cls.BFLOAT16


class RematPolicy(enum.Enum):
  """What each decoder layer keeps for the backward pass (jax.checkpoint policy per layer)."""
  NONE = "none"            # keep everything: fastest, most memory
  FULL = "full"            # keep only the layer input: recompute the whole layer
  SAVE_DOTS = "save_dots"  # keep matmul outputs without batch dims, recompute the cheap elementwise ops

  @property
  def checkpoint_policy(self):
    return _CHECKPOINT_POLICIES[self]


_CHECKPOINT_POLICIES = {
    RematPolicy.NONE: None,
    RematPolicy.FULL: jax.checkpoint_policies.nothing_saveable,
    RematPolicy.SAVE_DOTS: jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Llama3RopeScaling:
  """Llama 3.1's frequency-dependent RoPE rescaling (HF `rope_type: llama3`)."""
  factor: float
  low_freq_factor: float
  high_freq_factor: float
  original_max_position_embeddings: int

  def __post_init__(self):
    if self.high_freq_factor <= self.low_freq_factor:
      raise ValueError(
          f"rope_scaling: high_freq_factor ({self.high_freq_factor}) must exceed "
          f"low_freq_factor ({self.low_freq_factor})")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
  """Architecture + numerics of one causal LM. Immutable and hashable (usable as a jit static arg)."""
  family: ModelFamily
  vocab_size: int                 # V
  hidden_size: int                # D
  intermediate_size: int          # F
  num_layers: int                 # L
  num_heads: int                  # N
  num_kv_heads: int               # K
  head_dim: int                   # H
  rope_theta: float
  max_position_embeddings: int
  rms_norm_eps: float
  tie_word_embeddings: bool
  qkv_bias: bool                  # Qwen2: True; Llama: `attention_bias`
  o_bias: bool = False            # Llama's `attention_bias` also adds an o_proj bias
  rope_scaling: Llama3RopeScaling | None = None
  bos_token_id: int | None = None
  eos_token_id: int | tuple[int, ...] | None = None
  dtype_policy: DTypePolicy = DTypePolicy.FLOAT32
  remat: RematPolicy = RematPolicy.NONE
  attention_query_chunk: int | None = None  # see attention.attend: bounds score memory at long T
  # True: the decoder layers run under `jax.lax.scan` (compile time independent of depth). False: a
  # Python loop over them; compile time grows with L, but no stacked per-layer residual buffers are
  # filled and sliced in the backward pass (on CPU the tiny model's train step: ~13 % less time with
  # remat none, within noise with save_dots).
  scan_layers: bool = True

  def __post_init__(self):
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                 "num_kv_heads", "head_dim", "max_position_embeddings"):
      if int(getattr(self, name)) <= 0:
        raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"ModelConfig.num_heads ({self.num_heads}) must be a multiple of "
                       f"num_kv_heads ({self.num_kv_heads})")
    if self.attention_query_chunk is not None and self.attention_query_chunk <= 0:
      raise ValueError(f"ModelConfig.attention_query_chunk must be positive, got "
                       f"{self.attention_query_chunk}")
    if self.head_dim % 2:
      raise ValueError(f"ModelConfig.head_dim must be even for RoPE, got {self.head_dim}")
    if isinstance(self.eos_token_id, list):
      object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))

  @property
  def dtype(self) -> jnp.dtype:
    return self.dtype_policy.dtype

  @property
  def param_dtype(self) -> jnp.dtype:
    return self.dtype_policy.param_dtype

  def replace(self, **changes: Any) -> "ModelConfig":
    return dataclasses.replace(self, **changes)

  @classmethod
  def from_hf_config(cls, hf: Mapping[str, Any], **overrides: Any) -> "ModelConfig":
    """Builds a config from a parsed HF `config.json` (qwen2 or llama); `overrides` replace fields."""
    model_type = hf.get("model_type")
    try:
      family = ModelFamily(model_type)
    except ValueError:
      raise ValueError(
          f"config.json: unsupported model_type {model_type!r}; supported: "
          f"{[f.value for f in ModelFamily]}") from None

    def need(key: str):
      if key not in hf:
        raise ValueError(f"config.json ({model_type}): missing required key {key!r}")
      return hf[key]

    if hf.get("hidden_act", "silu") != "silu":
      raise ValueError(f"config.json: hidden_act {hf['hidden_act']!r} unsupported (only 'silu')")
    if hf.get("use_sliding_window", False):
      raise ValueError("config.json: use_sliding_window=True is unsupported")
    if hf.get("mlp_bias", False):
      raise ValueError("config.json: mlp_bias=True is unsupported")

    rope = dict(hf.get("rope_parameters") or {})
    legacy_scaling = hf.get("rope_scaling") or {}
    rope_theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    scaling_params = {**legacy_scaling, **{k: v for k, v in rope.items() if k != "rope_theta"}}
    rope_type = scaling_params.get("rope_type", scaling_params.get("type", "default"))
    if rope_type == "default":
      rope_scaling = None
    elif rope_type == "llama3":
      rope_scaling = Llama3RopeScaling(
          factor=float(scaling_params["factor"]),
          low_freq_factor=float(scaling_params["low_freq_factor"]),
          high_freq_factor=float(scaling_params["high_freq_factor"]),
          original_max_position_embeddings=int(scaling_params["original_max_position_embeddings"]))
    else:
      raise ValueError(f"config.json: rope type {rope_type!r} unsupported (default, llama3)")

    hidden, heads = int(need("hidden_size")), int(need("num_attention_heads"))
    attention_bias = bool(hf.get("attention_bias", False))
    fields = dict(
        family=family,
        vocab_size=int(need("vocab_size")),
        hidden_size=hidden,
        intermediate_size=int(need("intermediate_size")),
        num_layers=int(need("num_hidden_layers")),
        num_heads=heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(hf.get("head_dim") or hidden // heads),
        rope_theta=float(rope_theta),
        max_position_embeddings=int(need("max_position_embeddings")),
        rms_norm_eps=float(need("rms_norm_eps")),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        # transformers' Qwen2 attention hard-codes q/k/v biases (and none on o_proj).
        qkv_bias=True if family is ModelFamily.QWEN2 else attention_bias,
        o_bias=False if family is ModelFamily.QWEN2 else attention_bias,
        rope_scaling=rope_scaling,
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=hf.get("eos_token_id"),
    )
    fields.update(overrides)
    return cls(**fields)

  def to_hf_config(self) -> dict[str, Any]:
    """The fields of an HF config.json (pass to `transformers.AutoConfig.for_model`)."""
    hf: dict[str, Any] = dict(
        model_type=self.family.value,
        architectures=[self.family.hf_architecture],
        vocab_size=self.vocab_size,
        hidden_size=self.hidden_size,
        intermediate_size=self.intermediate_size,
        num_hidden_layers=self.num_layers,
        num_attention_heads=self.num_heads,
        num_key_value_heads=self.num_kv_heads,
        head_dim=self.head_dim,
        hidden_act="silu",
        max_position_embeddings=self.max_position_embeddings,
        rms_norm_eps=self.rms_norm_eps,
        tie_word_embeddings=self.tie_word_embeddings,
        rope_theta=self.rope_theta,
        bos_token_id=self.bos_token_id,
        eos_token_id=list(self.eos_token_id) if isinstance(self.eos_token_id, tuple)
        else self.eos_token_id,
        dtype=self.param_dtype.name,
    )
    if self.family is ModelFamily.LLAMA:
      if self.qkv_bias != self.o_bias:
        raise ValueError("Llama export: qkv_bias and o_bias must agree (HF has one attention_bias)")
      hf["attention_bias"] = self.qkv_bias
      hf["mlp_bias"] = False
    elif not self.qkv_bias or self.o_bias:
      raise ValueError("Qwen2 export: HF Qwen2 requires qkv_bias=True and o_bias=False")
    if self.rope_scaling is not None:
      hf["rope_scaling"] = dict(rope_type="llama3", **dataclasses.asdict(self.rope_scaling))
    return hf
