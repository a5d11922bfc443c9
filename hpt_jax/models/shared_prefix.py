"""Shared-prompt forward: each distinct prompt computed once, its rows' responses attending to it.

GRPO-style training has n rollouts per prompt, and a plain forward over rows `prompt ++ response`
runs every prompt n times. Here a micro-batch is laid out as G prefix rows (the distinct prompts,
right-padded to P) and B suffix rows (the responses, right-padded to R), each suffix row pointing at
its prefix (`prefix_index`). Every layer runs its norms, projections and MLP on the G·P prefix slots
and the B·R suffix slots; a prefix query attends causally within its prefix, a suffix query attends
to every real slot of its own prefix and to its own row's keys up to itself. That is the plain
forward's arithmetic on each row `prompt ++ response` (same RoPE positions, same keys and values,
same masks), with the prompt's work done once per group: for 8 rollouts of 64 tokens after a
32-token prompt, 29 % fewer slots. The gradient flowing into a shared prompt is the sum of its
rows' gradients, which is what the plain forward's n copies receive in total. (The same idea is
"Prefix Grouper", arXiv 2506.05433.)

The forward is two passes: `prefix_states` runs the G prompts alone through every layer and keeps
each layer's keys/values (and the top state at each prompt's last slot); `suffix_hidden` runs the
responses, each layer attending to its row's prompt's keys/values. The train step calls them apart
so that one `prefix_states` serves all micro-batches of an update (prompts whose rows sit in several
micro-batches are computed once per step, and no micro-batch pads prefix slots of its own): the
micro-batches return cotangents of the prefix states, summed and pulled back through the prompts'
pass once. The price is memory: the prompts' activations of every layer live for the whole step
(Qwen2.5-7B with `remat=full`: ~0.4 MB per prompt token, layer inputs + keys/values + their fp32
cotangent sums, sharded over the batch axes).

The output is aligned with the targets: `hidden[b, t]` is the state that predicts suffix token t,
i.e. the prefix's last real slot for t = 0 and suffix slot t − 1 after; so log-probs of the
response tokens come from `hidden` and the suffix tokens directly.

Letters: G prefix rows, P prefix slots, B suffix rows, R suffix slots, D width, N query heads,
K KV heads, H head dim.
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from hpt_jax.models import rope
from hpt_jax.models.attention import attend
from hpt_jax.models.config import RematPolicy
from hpt_jax.models.packed_prefill import packed_indices, slot_rows
from hpt_jax.models.sharding import constrain
from hpt_jax.models.transformer import CausalLM, DecoderLayer, apply_layers
from hpt_jax.typing import Array

_ACT = ("act_batch", "act_length", "act_embed")


def prefix_positions(prefix_mask: Array) -> Array:
  """[G, P] bool -> [G, P] int32 RoPE positions: 0, 1, ... over the real slots (0 on padding)."""
  return jnp.maximum(jnp.cumsum(prefix_mask.astype(jnp.int32), axis=-1) - 1, 0)


def suffix_positions(prefix_mask: Array, prefix_index: Array, suffix_length: int) -> Array:
  """[B, R] int32: a suffix row continues its prefix's positions (prefix length + t)."""
  lengths = prefix_mask.sum(-1).astype(jnp.int32)[prefix_index]                 # [B]
  return lengths[:, None] + jnp.arange(suffix_length, dtype=jnp.int32)[None, :]


def _causal(n: int) -> Array:
  return jnp.tril(jnp.ones((n, n), bool))


def prefix_attention_mask(prefix_mask: Array) -> Array:
  """[G, P] bool real prefix slots -> [G, P, P]: causal over the prompt's real slots."""
  return _causal(prefix_mask.shape[1])[None] & prefix_mask[:, None, :]


def suffix_attention_mask(prefix_mask: Array, suffix_mask: Array, prefix_index: Array) -> Array:
  """The suffix rows' attention mask.

  Args:
    prefix_mask: [G, P] bool, real prefix slots.
    suffix_mask: [B, R] bool, real suffix slots.
    prefix_index: [B] int, each suffix row's prefix row.
  Returns:
    [B, R, P + R]: the row's prefix's real slots, then causal over the row's real suffix slots.
  """
  p, r = prefix_mask.shape[1], suffix_mask.shape[1]
  own_prefix = jnp.broadcast_to(prefix_mask[prefix_index][:, None, :], (suffix_mask.shape[0], r, p))
  return jnp.concatenate([own_prefix, _causal(r)[None] & suffix_mask[:, None, :]], axis=-1)


class PrefixStates(NamedTuple):
  """What the suffix rows need from the prefix rows (`prefix_states`); differentiable.

  Attributes:
    keys: [L, G, P, K, H] each layer's prefix keys (RoPE applied).
    values: [L, G, P, K, H] each layer's prefix values.
    last: [G, D] the top layer's output at each prefix's last real slot (before the final norm):
      the state that predicts the first response token.
  """
  keys: Array
  values: Array
  last: Array


def _project(layer: DecoderLayer, x: Array, cos: Array, sin: Array) -> tuple[Array, Array, Array]:
  """The layer's normed q, k, v of x [., T, D] (RoPE on q and k): [., T, N|K|K, H]."""
  attn = layer.self_attn
  normed = layer.input_layernorm(x)
  q = rope.apply_rope(attn.q_proj("btd,dnh->btnh", normed), cos, sin)
  k = rope.apply_rope(attn.k_proj("btd,dkh->btkh", normed), cos, sin)
  v = attn.v_proj("btd,dkh->btkh", normed)
  return constrain(q, ("act_batch", "act_length", "act_heads", "head_dim")), k, v


def _finish(layer: DecoderLayer, x: Array, attention_out: Array) -> Array:
  """The layer's output projection, residual and MLP: x [., T, D] -> [., T, D]."""
  x = x + layer.self_attn.o_proj("btnh,nhd->btd", attention_out)
  x = x + layer.mlp(layer.post_attention_layernorm(x))
  return constrain(x, _ACT)


def _per_layer(model: CausalLM, layer_fn):
  """`layer_fn(layer, carry, xs) -> (carry, out)` as a body over the stacked layers, with the
  config's remat policy."""
  graphdef, layer_state = nnx.split(model.layers)

  def body(carry, xs):
    state, extra = xs
    return layer_fn(nnx.merge(graphdef, state), carry, extra)

  if model.config.remat is not RematPolicy.NONE:
    body = jax.checkpoint(body, policy=model.config.remat.checkpoint_policy, prevent_cse=False)
  return body, layer_state


def _embed(model: CausalLM, tokens: Array) -> Array:
  table = model.embed_tokens.embedding[...]
  return constrain(jnp.take(table, tokens, axis=0).astype(model.config.dtype), _ACT)


def _inverse_frequencies(config) -> Array:
  return rope.inverse_frequencies(head_dim=config.head_dim, theta=config.rope_theta,
                                  scaling=config.rope_scaling)


def prefix_states(model: CausalLM, prefix_tokens: Array, prefix_mask: Array) -> PrefixStates:
  """Runs the prompts alone through every layer (causal within each prompt).

  Args:
    model: the policy.
    prefix_tokens: [G, P] int32 prompts (any padding side; padded slots are masked).
    prefix_mask: [G, P] bool, True on real prompt tokens (a row may be all False: an unused slot).
  Returns:
    `PrefixStates` ([L, G, P, K, H] keys and values, [G, D] last states).
  """
  chex.assert_rank([prefix_tokens, prefix_mask], 2)
  chex.assert_equal_shape([prefix_tokens, prefix_mask])
  prefix_mask = prefix_mask.astype(bool)
  p = prefix_mask.shape[1]
  cos, sin = rope.rope_angles(prefix_positions(prefix_mask), _inverse_frequencies(model.config))
  mask = prefix_attention_mask(prefix_mask)

  def layer_fn(layer, x, _):
    q, k, v = _project(layer, x, cos, sin)
    out = attend(q, k, v, mask, query_chunk=layer.self_attn.query_chunk)
    return _finish(layer, x, out), (k, v)

  body, layer_state = _per_layer(model, layer_fn)
  x, (keys, values) = apply_layers(body, _embed(model, prefix_tokens), (layer_state, None),
                                   scan=model.config.scan_layers)
  last = p - 1 - jnp.argmax(prefix_mask[:, ::-1], axis=-1)                      # [G]
  return PrefixStates(keys=keys, values=values,
                      last=jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0])


def suffix_hidden(model: CausalLM, prefix: PrefixStates, *, prefix_mask: Array, prefix_index: Array,
                  suffix_tokens: Array, suffix_mask: Array, packed_tokens: int | None = None) -> Array:
  """Final-norm hidden states that predict each suffix token, the prompts' work given.

  With `packed_tokens` C, every layer's per-token work (norms, projections, RoPE, MLP) runs on the
  suffix's real tokens gathered into C rows instead of on all B·R slots; attention alone runs in the
  padded [B, R] layout (queries, keys and values scattered back, padded slots zero: no real query
  reads them). Responses that end early then cost their real tokens only, up to the rounding of C.
  Same result as the padded pass up to float rounding on every real slot; a padded slot's state is the
  final norm of zero. Unsharded batches only (the gather crosses rows).

  Args:
    model: the policy.
    prefix: `prefix_states` of the G prompts.
    prefix_mask: [G, P] bool, the prompts' real slots.
    prefix_index: [B] int32 in [0, G), the prefix row of each suffix row.
    suffix_tokens: [B, R] int32 responses, left-aligned (slot t is response token t).
    suffix_mask: [B, R] bool, True on real response tokens (all False on padding rows).
    packed_tokens: C >= the number of True entries of `suffix_mask` (static; fewer would silently
      drop tokens, so the caller picks C from the count: `training.response_packing`), or None for the
      padded pass.
  Returns:
    [B, R, D]: row b, slot t is the hidden state whose logits predict `suffix_tokens[b, t]`.
  """
  chex.assert_rank([suffix_tokens, suffix_mask, prefix_index], [2, 2, 1])
  chex.assert_equal_shape([suffix_tokens, suffix_mask])
  chex.assert_equal_shape_prefix([suffix_tokens, prefix_index], 1)
  prefix_mask, suffix_mask = prefix_mask.astype(bool), suffix_mask.astype(bool)
  b, r = suffix_tokens.shape
  positions = suffix_positions(prefix_mask, prefix_index, r)
  mask = suffix_attention_mask(prefix_mask, suffix_mask, prefix_index)
  if packed_tokens is None:
    pack = unpack = lambda y: y
  else:
    if not 0 < packed_tokens <= b * r:
      raise ValueError(f"suffix_hidden: packed_tokens must be in [1, {b * r}], got {packed_tokens}")
    idx, _ = packed_indices(suffix_mask, packed_tokens)
    slots = slot_rows(suffix_mask, packed_tokens)
    # [B, R, ...] -> [1, C, ...]: the real slots in row-major order (then filler copies of slot 0,
    # whose outputs nothing reads). [1, C, ...] -> [B, R, ...]: a gather per slot, padded slots 0.
    pack = lambda y: y.reshape((b * r,) + y.shape[2:])[idx][None]
    unpack = lambda y: jnp.take(y[0], slots, axis=0, mode="fill", fill_value=0).reshape((b, r) + y.shape[2:])
  cos, sin = rope.rope_angles(pack(positions), _inverse_frequencies(model.config))

  def layer_fn(layer, x, prefix_kv):
    q, k, v = (unpack(y) for y in _project(layer, x, cos, sin))
    # Each row reads its prefix's keys/values (a gather; its gradient sums over the rows).
    keys = jnp.concatenate([prefix_kv[0][prefix_index], k], axis=1)            # [B, P + R, K, H]
    values = jnp.concatenate([prefix_kv[1][prefix_index], v], axis=1)
    out = attend(q, keys, values, mask, query_chunk=layer.self_attn.query_chunk)
    return _finish(layer, x, pack(out)), None

  body, layer_state = _per_layer(model, layer_fn)
  xs, _ = apply_layers(body, _embed(model, pack(suffix_tokens)), (layer_state, (prefix.keys, prefix.values)),
                       scan=model.config.scan_layers)
  xs = unpack(xs)
  # Slot t predicts token t + 1; the first response token is predicted by the prompt's last token.
  first = prefix.last[prefix_index][:, None]                                    # [B, 1, D]
  hidden = jnp.concatenate([first.astype(xs.dtype), xs[:, :r - 1]], axis=1)
  return model.norm(constrain(hidden, _ACT))


def shared_prefix_hidden(model: CausalLM, *, prefix_tokens: Array, prefix_mask: Array, suffix_tokens: Array,
                         suffix_mask: Array, prefix_index: Array, packed_tokens: int | None = None) -> Array:
  """`suffix_hidden` after `prefix_states`: the whole shared-prompt forward of one batch.

  Args:
    model: the policy.
    prefix_tokens: [G, P] int32 prompts (any padding side; padded slots are masked).
    prefix_mask: [G, P] bool, True on real prompt tokens; a prefix row no suffix row uses may be
      all False.
    suffix_tokens: [B, R] int32 responses, left-aligned (slot t is response token t).
    suffix_mask: [B, R] bool, True on real response tokens (all False on padding rows).
    prefix_index: [B] int32 in [0, G), the prefix row of each suffix row.
    packed_tokens: as in `suffix_hidden`.
  Returns:
    [B, R, D]: row b, slot t is the hidden state whose logits predict `suffix_tokens[b, t]`.
  """
  prefix = prefix_states(model, prefix_tokens, prefix_mask)
  return suffix_hidden(model, prefix, prefix_mask=prefix_mask, prefix_index=prefix_index,
                       suffix_tokens=suffix_tokens, suffix_mask=suffix_mask, packed_tokens=packed_tokens)
