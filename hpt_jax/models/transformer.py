"""The decoder-only transformer (Qwen2 / Llama family) as Flax NNX modules.

Letters: B batch, T new tokens, S key slots (T without a cache, the cache length with one), D width,
F MLP width, N query heads, K KV heads, G = N / K query heads per KV head, H head dim, V vocab, L layers.

Parameter names mirror the HF checkpoint names (`self_attn.q_proj`, `mlp.gate_proj`, ...) so the import
table in `hf_io.py` stays a list of renames. Kernels are stored input-first (`[D, N, H]` for q_proj)
because that is the einsum-friendly layout; HF stores `[N*H, D]`.

The L decoder layers are ONE module whose parameters have a leading `layers` axis (built with
`nnx.vmap`) and run under `jax.lax.scan` (`apply_layers`): compile time does not grow with depth, and
the per-layer remat policy wraps the scan body. `ModelConfig.scan_layers=False` runs the same body in a
Python loop instead.
"""

from __future__ import annotations

from typing import Callable, Sequence

import chex
import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from hpt_jax.models import rope
from hpt_jax.models.attention import attend, attend_cache
from hpt_jax.models.cache import KVCache, write_layer
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
    return rms_norm(x, self.scale[...], eps=self.eps)


def rms_norm(x: Array, scale: Array, *, eps: float) -> Array:
  """x: [..., D], scale: [D] -> [..., D] in x's dtype, normalized in float32."""
  xf = x.astype(jnp.float32)
  normed = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
  # Cast before the scale, as transformers does, so bf16 rounding matches HF.
  return normed.astype(x.dtype) * scale.astype(x.dtype)


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

  def __call__(self, x: Array, cos: Array, sin: Array, mask: Array) -> Array:
    """One attention block without a cache (cached calls run `_cached_layer`).

    Args:
      x: [B, T, D] normed input.
      cos, sin: [B, T, H] rotation of the T tokens.
      mask: [B, T, T] bool.
    Returns:
      [B, T, D].
    """
    q = rope.apply_rope(self.q_proj("btd,dnh->btnh", x), cos, sin)
    k = rope.apply_rope(self.k_proj("btd,dkh->btkh", x), cos, sin)
    v = self.v_proj("btd,dkh->btkh", x)
    q = constrain(q, ("act_batch", "act_length", "act_heads", "head_dim"))
    out = attend(q, k, v, mask, query_chunk=self.query_chunk)
    return self.o_proj("btnh,nhd->btd", out)


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
    # As [B·T, D] rows: XLA:CPU's backward of the rank-3 einsums transposed about twice as much
    # (train step, 3072 x 256 x 704: MLP fwd+bwd 250 -> 168 ms CPU).
    b, t, d = x.shape
    rows = x.reshape(b * t, d)
    hidden = jax.nn.silu(self.gate_proj("nd,df->nf", rows)) * self.up_proj("nd,df->nf", rows)
    hidden = constrain(hidden.reshape(b, t, -1), ("act_batch", "act_length", "act_mlp"))
    return self.down_proj("nf,fd->nd", hidden.reshape(b * t, -1)).reshape(b, t, d)


class DecoderLayer(nnx.Module):
  """Pre-norm block: x + attn(norm(x)), then + mlp(norm(.))."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.input_layernorm = RMSNorm(config)
    self.self_attn = Attention(config, rngs=rngs)
    self.post_attention_layernorm = RMSNorm(config)
    self.mlp = MLP(config, rngs=rngs)

  def __call__(self, x, cos, sin, mask):
    """x: [B, T, D] -> [B, T, D] (no cache; see `Attention`)."""
    x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
    x = x + self.mlp(self.post_attention_layernorm(x))
    return constrain(x, ("act_batch", "act_length", "act_embed"))


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


@flax.struct.dataclass
class CachedLayer:
  """One decoder layer's weights laid out for cached (prefill / decode) calls.

  Made from the stacked parameters by `CausalLM.cached_layers`, once per decode loop: the kernels are
  cut out of the [L, ...] stack (XLA:CPU copies such slices inside a loop body, i.e. every weight
  once per token), flattened to 2-D matmuls, cast to the compute dtype, and the gate and up kernels
  are stacked so that the MLP input is multiplied once (a [D, 2, F] stack keeps the F axis, and so
  its tensor sharding, intact).
  """

  input_norm: Array              # [D]
  q: Array                       # [D, N*H]
  k: Array                       # [D, K*H]
  v: Array                       # [D, K*H]
  q_bias: Array | None           # [N*H]
  k_bias: Array | None           # [K*H]
  v_bias: Array | None           # [K*H]
  o: Array                       # [N*H, D]
  o_bias: Array | None           # [D]
  post_norm: Array               # [D]
  gate_up: Array                 # [D, 2, F]: gate_proj, up_proj
  down: Array                    # [F, D]


def _cached_layer(w: CachedLayer, x: Array, cos: Array, sin: Array, mask: Array,
                  cached: tuple[Array, Array, Array], *, config: ModelConfig, last_only: bool
                  ) -> tuple[Array, tuple[Array, Array]]:
  """`DecoderLayer` with a KV cache: the same math on `CachedLayer` weights.

  Args:
    w: the layer's weights.
    x: [B, T, D] residual stream in the compute dtype.
    cos, sin: [B, T, H] rotation of the T new tokens.
    mask: [B, T, S] bool.
    cached: (k_layer [B, K, H, S], v_layer [B, K, S, H], index: int32 []) (the `KVCache` layouts);
      the new keys/values are written at slots [index, index + T) before attending.
    last_only: attention output and MLP for the last position only (all T keys/values are still
      written); the result is then [B, 1, D].
  Returns:
    (x [B, T, D] or [B, 1, D], the updated (k_layer, v_layer)).
  """
  b, t, _ = x.shape
  n, kv, h = config.num_heads, config.num_kv_heads, config.head_dim

  def dense(y, kernel, bias):
    out = jnp.einsum("btd,de->bte", y, kernel)
    return out if bias is None else out + bias

  normed = rms_norm(x, w.input_norm, eps=config.rms_norm_eps)
  q = rope.apply_rope(dense(normed, w.q, w.q_bias).reshape(b, t, n, h), cos, sin)
  k = rope.apply_rope(dense(normed, w.k, w.k_bias).reshape(b, t, kv, h), cos, sin)
  v = dense(normed, w.v, w.v_bias).reshape(b, t, kv, h)
  q = constrain(q, ("act_batch", "act_length", "act_heads", "head_dim"))
  # Write first, then read the written buffer: the old cache value is dead after the write, so
  # XLA updates the loop-carried buffer in place (reading the old buffer next to a write of it
  # made XLA copy every layer's cache twice per step).
  k_layer, v_layer, index = cached
  k_layer, v_layer = write_layer(k_layer, v_layer, k, v, index)
  if last_only:
    x, q, mask, t = x[:, -1:], q[:, -1:], mask[:, -1:], 1
  out = attend_cache(q, k_layer.astype(q.dtype), v_layer.astype(q.dtype), mask,
                     query_chunk=config.attention_query_chunk)
  x = x + dense(out.reshape(b, t, n * h), w.o, w.o_bias)
  normed = rms_norm(x, w.post_norm, eps=config.rms_norm_eps)
  gate_up = jnp.einsum("btd,dcf->btcf", normed, w.gate_up)                 # [B, T, 2, F]
  hidden = jax.nn.silu(gate_up[:, :, 0]) * gate_up[:, :, 1]
  hidden = constrain(hidden, ("act_batch", "act_length", "act_mlp"))
  x = x + jnp.einsum("btf,fd->btd", hidden, w.down)
  return constrain(x, ("act_batch", "act_length", "act_embed")), (k_layer, v_layer)


def apply_layers(body: Callable, carry, layer_state, *, scan: bool):
  """Runs `body(carry, layer_i) -> (carry, out)` over the leading `layers` axis of `layer_state`.

  `scan=True` is `jax.lax.scan`; `scan=False` is a Python loop over the layers (one copy of the body
  per layer in the program). Same arithmetic: the loop just avoids the scan's stacked residual buffers,
  which the backward pass fills and slices layer by layer.

  Returns:
    (the final carry, the outputs stacked over layers, or None when `body` returns None).
  """
  if scan:
    return jax.lax.scan(body, carry, layer_state)
  num_layers = jax.tree.leaves(layer_state)[0].shape[0]
  outputs = []
  for i in range(num_layers):
    carry, out = body(carry, jax.tree.map(lambda leaf: leaf[i], layer_state))
    outputs.append(out)
  if outputs[0] is None:
    return carry, None
  return carry, jax.tree.map(lambda *outs: jnp.stack(outs), *outputs)


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
               cached_layers: tuple[CachedLayer, ...] | None = None
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
      cached_layers: with a cache only: `self.cached_layers()` computed once outside a decode loop
        (else it is computed here, in every call).
    Returns:
      (hidden [B, T, D] (or [B, 1, D]) after the final norm, updated cache or None).
    """
    hidden, cache, _ = self._forward(tokens, positions, attention_mask, cache, collect=False,
                                     last_only=last_only, cached_layers=cached_layers)
    return hidden, cache

  def cached_layers(self) -> tuple[CachedLayer, ...]:
    """The L layers' weights laid out for cached calls (see `CachedLayer`).

    A decode loop makes these ONCE before its `while_loop` and passes them to every cached call; the
    price is one extra copy of the layer weights alive while the loop runs.
    """
    config = self.config
    layers = self.layers
    cast = lambda a: a.astype(config.dtype)
    flat_in = lambda dense, i: cast(dense.kernel[i].reshape(config.hidden_size, -1))
    bias = lambda dense, i: None if dense.bias is None else cast(dense.bias[i].reshape(-1))
    attn, mlp = layers.self_attn, layers.mlp
    out = []
    for i in range(config.num_layers):
      gate_up = jnp.stack([mlp.gate_proj.kernel[i], mlp.up_proj.kernel[i]], axis=1)  # [D, 2, F]
      out.append(CachedLayer(
          input_norm=layers.input_layernorm.scale[i], post_norm=layers.post_attention_layernorm.scale[i],
          q=flat_in(attn.q_proj, i), k=flat_in(attn.k_proj, i), v=flat_in(attn.v_proj, i),
          q_bias=bias(attn.q_proj, i), k_bias=bias(attn.k_proj, i), v_bias=bias(attn.v_proj, i),
          o=cast(attn.o_proj.kernel[i].reshape(-1, config.hidden_size)), o_bias=bias(attn.o_proj, i),
          gate_up=constrain(cast(gate_up), ("embed", None, "mlp")),
          down=cast(mlp.down_proj.kernel[i])))
    return tuple(out)

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
               last_only: bool = False, cached_layers: tuple[CachedLayer, ...] | None = None):
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

    new_cache, stream = None, None
    if cache is None:
      graphdef, layer_state = nnx.split(self.layers)

      def layer_fn(x, state):
        return nnx.merge(graphdef, state)(x, cos, sin, mask)

      if config.remat is not RematPolicy.NONE:
        layer_fn = jax.checkpoint(layer_fn, policy=config.remat.checkpoint_policy, prevent_cse=False)

      def body(x, state):
        x = layer_fn(x, state)
        return x, (x if collect else None)

      x, stream = apply_layers(body, x, layer_state, scan=config.scan_layers)
      x = x[:, -1:] if last_only else x
    else:
      # Decoding: a Python loop over layers (static layer index) so that each layer reads its own
      # cache buffer as is and updates it in place; a scan would slice (= copy) a stacked cache.
      if cache.num_layers != config.num_layers:
        raise ValueError(f"cache has {cache.num_layers} layers, the model {config.num_layers}")
      if cached_layers is None:
        cached_layers = self.cached_layers()
      elif len(cached_layers) != config.num_layers:
        raise ValueError(f"cached_layers has {len(cached_layers)} layers, the model {config.num_layers}")
      new_k, new_v = [], []
      for i, weights in enumerate(cached_layers):
        last = last_only and i == config.num_layers - 1
        x, (k_layer, v_layer) = _cached_layer(weights, x, cos, sin, mask,
                                              (cache.k[i], cache.v[i], cache.index), config=config,
                                              last_only=last)
        new_k.append(k_layer)
        new_v.append(v_layer)
      new_cache = KVCache(k=tuple(new_k), v=tuple(new_v), key_mask=key_mask,
                          index=cache.index + tokens.shape[1])
    if collect:
      embedded = jnp.take(self.embed_tokens.embedding[...], tokens, axis=0).astype(config.dtype)
      stream = jnp.concatenate([embedded[None], stream], axis=0)
    return self.norm(x), new_cache, stream
