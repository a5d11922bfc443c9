"""The decoder-only transformer (Qwen2 / Llama family) as Flax NNX modules.

Letters: B batch, T new tokens, S key slots (T without a cache, the cache length with one), D width,
F MLP width, N query heads, K KV heads, G = N / K query heads per KV head, H head dim, V vocab, L layers.

Parameter names mirror the HF checkpoint names (`self_attn.q_proj`, `mlp.gate_proj`, ...) so the import
table in `hf_io.py` stays a list of renames. Kernels are stored input-first (`[D, N, H]` for q_proj)
because that is the einsum-friendly layout; HF stores `[N*H, D]`.

The L decoder layers are ONE module whose parameters have a leading `layers` axis (built with
`nnx.vmap`) and run under `jax.lax.scan`: compile time does not grow with depth, and the per-layer
remat policy wraps the scan body.
"""

from __future__ import annotations

from typing import Callable, Sequence

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from hpt_jax.models import rope
from hpt_jax.models.attention import attend, attend_cache
from hpt_jax.models.cache import KVCache
from hpt_jax.models.config import ModelConfig, RematPolicy
from hpt_jax.models.sharding import constrain
from hpt_jax.typing import Array

_INIT_STDDEV = 0.02  # HF `initializer_range` for both families


def _normal(key: Array, shape: Sequence[int], dtype) -> Array:
  return _INIT_STDDEV * jax.random.normal(key, shape, dtype)


def _param(shape: Sequence[int], axes: tuple[str, ...], dtype, *,
           init: Callable[..., Array] | None = None, rngs: nnx.Rngs | None = None,
           fill: float = 0.0) -> nnx.Param:
  """A parameter tagged with its logical axes (read by `sharding.param_shardings`).

  Drawn from `init(key, shape, dtype)` when given (needs `rngs`), else filled with `fill`.
  """
  value = (init(rngs.params(), shape, dtype) if init is not None
           else jnp.full(shape, fill, dtype))
  return nnx.Param(value, logical_axes=axes)


class RMSNorm(nnx.Module):
  """y = x / sqrt(mean(x^2) + eps) * scale, normalized in float32 whatever the compute dtype."""

  def __init__(self, config: ModelConfig):
    self.eps = config.rms_norm_eps
    self.scale = _param((config.hidden_size,), ("norm",), config.param_dtype, fill=1.0)

  def __call__(self, x: Array) -> Array:
    """x: [..., D] -> [..., D] in x's dtype."""
    xf = x.astype(jnp.float32)
    normed = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    # Cast before the scale, as transformers does, so bf16 rounding matches HF.
    return normed.astype(x.dtype) * self.scale[...].astype(x.dtype)


class Dense(nnx.Module):
  """A kernel (+ optional bias) applied by an einsum the caller names; HF `nn.Linear` equivalent.

  The bias spans the kernel's output dims, `kernel_shape[bias_from:]`: dims 1.. for q/k/v
  ([D, N, H] -> bias [N, H]), dim 2 for o_proj ([N, H, D] -> bias [D]).
  """

  def __init__(self, config: ModelConfig, *, kernel_shape: Sequence[int],
               kernel_axes: tuple[str, ...], bias: bool, rngs: nnx.Rngs, bias_from: int = 1):
    self.dtype = config.dtype
    self.kernel = _param(kernel_shape, kernel_axes, config.param_dtype, init=_normal, rngs=rngs)
    self.bias = (_param(kernel_shape[bias_from:], kernel_axes[bias_from:], config.param_dtype)
                 if bias else None)

  def __call__(self, equation: str, x: Array) -> Array:
    y = jnp.einsum(equation, x.astype(self.dtype), self.kernel[...].astype(self.dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class Attention(nnx.Module):
  """GQA self-attention with RoPE; writes its new keys/values for the caller to cache."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    d, n, k, h = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
    self.q_proj = Dense(config, kernel_shape=(d, n, h), kernel_axes=("embed", "heads", "head_dim"),
                        bias=config.qkv_bias, rngs=rngs)
    self.k_proj = Dense(config, kernel_shape=(d, k, h),
                        kernel_axes=("embed", "kv_heads", "head_dim"), bias=config.qkv_bias,
                        rngs=rngs)
    self.v_proj = Dense(config, kernel_shape=(d, k, h),
                        kernel_axes=("embed", "kv_heads", "head_dim"), bias=config.qkv_bias,
                        rngs=rngs)
    # Llama's `attention_bias` also biases o_proj; Qwen2 never does.
    self.o_proj = Dense(config, kernel_shape=(n, h, d), kernel_axes=("heads", "head_dim", "embed"),
                        bias=config.o_bias, bias_from=2, rngs=rngs)
    self.query_chunk = config.attention_query_chunk

  def __call__(self, x: Array, cos: Array, sin: Array, mask: Array,
               cached: tuple[Array, Array, Array] | None, *, last_only: bool = False
               ) -> tuple[Array, tuple[Array, Array] | None]:
    """One attention block.

    Args:
      x: [B, T, D] normed input.
      cos, sin: [B, T, H] rotation of the T new tokens.
      mask: [B, T, S] bool (S = T without a cache).
      cached: None, or (k_layer, v_layer: [B, K, S, H], index: int32 []) this layer's cache; the new
        keys/values are written at slots [index, index + T) before attending.
      last_only: with a cache, attend from the last query only (all T keys/values are still
        written); out is then [B, 1, D].
    Returns:
      (out [B, T, D], the updated (k_layer, v_layer) or None).
    """
    q = rope.apply_rope(self.q_proj("btd,dnh->btnh", x), cos, sin)
    k = rope.apply_rope(self.k_proj("btd,dkh->btkh", x), cos, sin)
    v = self.v_proj("btd,dkh->btkh", x)
    q = constrain(q, ("act_batch", "act_length", "act_heads", "head_dim"))
    if cached is None:
      out = attend(q, k, v, mask, query_chunk=self.query_chunk)
      return self.o_proj("btnh,nhd->btd", out), None
    # Write first, then read the written buffer: the old cache value is dead after the write, so
    # XLA updates the loop-carried buffer in place (reading the old buffer next to a write of it
    # made XLA copy every layer's cache twice per step).
    k_layer, v_layer, index = cached
    write = lambda buf, new: jax.lax.dynamic_update_slice(
        buf, new.swapaxes(1, 2).astype(buf.dtype), (0, 0, index, 0))          # new: [B, T, K, H]
    k_layer, v_layer = write(k_layer, k), write(v_layer, v)
    if last_only:
      q, mask = q[:, -1:], mask[:, -1:]
    out = attend_cache(q, k_layer.astype(q.dtype), v_layer.astype(q.dtype), mask,
                       query_chunk=self.query_chunk)
    return self.o_proj("btnh,nhd->btd", out), (k_layer, v_layer)


class MLP(nnx.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    d, f = config.hidden_size, config.intermediate_size
    self.gate_proj = Dense(config, kernel_shape=(d, f), kernel_axes=("embed", "mlp"), bias=False,
                           rngs=rngs)
    self.up_proj = Dense(config, kernel_shape=(d, f), kernel_axes=("embed", "mlp"), bias=False,
                         rngs=rngs)
    self.down_proj = Dense(config, kernel_shape=(f, d), kernel_axes=("mlp", "embed"), bias=False,
                           rngs=rngs)

  def __call__(self, x: Array) -> Array:
    """x: [B, T, D] -> [B, T, D]."""
    hidden = jax.nn.silu(self.gate_proj("btd,df->btf", x)) * self.up_proj("btd,df->btf", x)
    hidden = constrain(hidden, ("act_batch", "act_length", "act_mlp"))
    return self.down_proj("btf,fd->btd", hidden)


class DecoderLayer(nnx.Module):
  """Pre-norm block: x + attn(norm(x)), then + mlp(norm(.))."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.input_layernorm = RMSNorm(config)
    self.self_attn = Attention(config, rngs=rngs)
    self.post_attention_layernorm = RMSNorm(config)
    self.mlp = MLP(config, rngs=rngs)

  def __call__(self, x, cos, sin, mask, cached, *, last_only: bool = False):
    """x: [B, T, D] -> ([B, T, D] or [B, 1, D] if last_only, updated (k_layer, v_layer) or None);
    see `Attention`."""
    attn_out, kv = self.self_attn(self.input_layernorm(x), cos, sin, mask, cached,
                                  last_only=last_only)
    x = (x[:, -1:] if last_only else x) + attn_out
    x = x + self.mlp(self.post_attention_layernorm(x))
    return constrain(x, ("act_batch", "act_length", "act_embed")), kv


class Embedding(nnx.Module):
  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.embedding = _param((config.vocab_size, config.hidden_size), ("vocab", "embed"),
                            config.param_dtype, init=_normal, rngs=rngs)


def _attention_mask(attention_mask: Array, cache: KVCache | None) -> tuple[Array, Array | None]:
  """Builds the [B, T, S] attention mask (and the cache's updated key_mask)."""
  b, t = attention_mask.shape
  if cache is None:
    causal = jnp.tril(jnp.ones((t, t), bool))
    return causal[None] & attention_mask[:, None, :], None
  key_mask = jax.lax.dynamic_update_slice(cache.key_mask, attention_mask, (0, cache.index))
  slots = jnp.arange(cache.length)
  query_slots = cache.index + jnp.arange(t)
  causal = slots[None, :] <= query_slots[:, None]                # [T, S]
  return causal[None] & key_mask[:, None, :], key_mask


class CausalLM(nnx.Module):
  """Decoder-only LM. See WORKSPACE.md "Model" for the call contract."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.embed_tokens = Embedding(config, rngs=rngs)

    @nnx.split_rngs(splits=config.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0,
              transform_metadata={nnx.PARTITION_NAME: "layers", "logical_axes": "layers"})
    def make_layers(rngs: nnx.Rngs) -> DecoderLayer:
      return DecoderLayer(config, rngs=rngs)

    self.layers = make_layers(rngs)
    self.norm = RMSNorm(config)
    self.lm_head = (None if config.tie_word_embeddings else
                    Dense(config, kernel_shape=(config.hidden_size, config.vocab_size),
                          kernel_axes=("embed", "vocab"), bias=False, rngs=rngs))

  def __call__(self, tokens: Array, *, positions: Array, attention_mask: Array,
               cache: KVCache | None = None, last_only: bool = False,
               layer_states: tuple[nnx.State, ...] | None = None
               ) -> tuple[Array, KVCache | None]:
    """Runs the decoder over T new tokens.

    Args:
      tokens: [B, T] int32.
      positions: [B, T] int32 RoPE positions (`cumsum(mask) - 1` for left padding).
      attention_mask: [B, T] bool, True = real token.
      cache: None (plain causal forward) or a `KVCache` the tokens are appended to.
      last_only: return the last position's hidden state only ([B, 1, D]). With a cache the last
        layer then runs attention output and MLP for that position only (a sampler's prefill needs
        no other); without one the result is sliced.
      layer_states: with a cache only: `self.layer_states()` computed once outside a decode loop,
        used instead of slicing the stacked layer weights here (see `layer_states`).
    Returns:
      (hidden [B, T, D] (or [B, 1, D]) after the final norm, updated cache or None).
    """
    hidden, cache, _ = self._forward(tokens, positions, attention_mask, cache, collect=False,
                                     last_only=last_only, layer_states=layer_states)
    return hidden, cache

  def layer_states(self) -> tuple[nnx.State, ...]:
    """The stacked layer weights as L per-layer states (copies of the slices).

    A decode loop computes these ONCE before its `while_loop` and passes them to every cached call:
    XLA:CPU does not hoist the loop-invariant slices of the stacked [L, ...] weights out of the loop
    body, so slicing inside the step copied every weight once per generated token. The price is one
    extra copy of the layer weights alive while the loop runs.
    """
    _, state = nnx.split(self.layers)
    return tuple(jax.tree.map(lambda a, i=i: a[i], state) for i in range(self.config.num_layers))

  def hidden_states(self, tokens: Array, *, positions: Array, attention_mask: Array) -> Array:
    """Residual stream before layer 0 and after each layer (no final norm): [L + 1, B, T, D]."""
    _, _, stream = self._forward(tokens, positions, attention_mask, None, collect=True)
    return stream

  def unembedding(self) -> Array:
    """[D, V]: the tied embedding transposed, or the lm_head kernel."""
    if self.lm_head is None:
      return self.embed_tokens.embedding[...].T
    return self.lm_head.kernel[...]

  def logits(self, hidden: Array) -> Array:
    """hidden: [B, T, D] -> logits [B, T, V] float32 (matmul accumulated in float32)."""
    unembed = self.unembedding().astype(hidden.dtype)
    logits = jnp.einsum("btd,dv->btv", hidden, unembed, preferred_element_type=jnp.float32)
    return constrain(logits, ("act_batch", "act_length", "act_vocab"))

  def _forward(self, tokens, positions, attention_mask, cache, *, collect: bool,
               last_only: bool = False, layer_states: tuple[nnx.State, ...] | None = None):
    config = self.config
    chex.assert_rank([tokens, positions, attention_mask], 2)
    chex.assert_equal_shape([tokens, positions, attention_mask])
    chex.assert_type([tokens, positions], int)
    attention_mask = attention_mask.astype(bool)

    x = jnp.take(self.embed_tokens.embedding[...], tokens, axis=0).astype(config.dtype)
    x = constrain(x, ("act_batch", "act_length", "act_embed"))
    inv_freq = rope.inverse_frequencies(head_dim=config.head_dim, theta=config.rope_theta,
                                        scaling=config.rope_scaling)
    cos, sin = rope.rope_angles(positions, inv_freq)
    mask, key_mask = _attention_mask(attention_mask, cache)

    graphdef, layer_state = nnx.split(self.layers)

    def layer_fn(x, state, cached, last_only):
      return nnx.merge(graphdef, state)(x, cos, sin, mask, cached, last_only=last_only)

    if config.remat is not RematPolicy.NONE:
      layer_fn = jax.checkpoint(layer_fn, policy=config.remat.checkpoint_policy, prevent_cse=False,
                                static_argnums=(3,))

    new_cache, stream = None, None
    if cache is None:
      def body(x, state):
        x, _ = layer_fn(x, state, None, False)
        return x, (x if collect else None)

      x, stream = jax.lax.scan(body, x, layer_state)
      x = x[:, -1:] if last_only else x
    else:
      # Decoding: a Python loop over layers (static layer index) so that each layer reads its own
      # cache buffer as is and updates it in place; a scan would slice (= copy) a stacked cache.
      if cache.num_layers != config.num_layers:
        raise ValueError(f"cache has {cache.num_layers} layers, the model {config.num_layers}")
      if layer_states is None:
        layer_states = self.layer_states()
      elif len(layer_states) != config.num_layers:
        raise ValueError(f"layer_states has {len(layer_states)} layers, the model {config.num_layers}")
      new_k, new_v = [], []
      for i, state in enumerate(layer_states):
        last = last_only and i == config.num_layers - 1
        x, (k_layer, v_layer) = layer_fn(x, state, (cache.k[i], cache.v[i], cache.index), last)
        new_k.append(k_layer)
        new_v.append(v_layer)
      new_cache = KVCache(k=tuple(new_k), v=tuple(new_v), key_mask=key_mask,
                          index=cache.index + tokens.shape[1])
    if collect:
      embedded = jnp.take(self.embed_tokens.embedding[...], tokens, axis=0).astype(config.dtype)
      stream = jnp.concatenate([embedded[None], stream], axis=0)
    return self.norm(x), new_cache, stream
