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

The output is aligned with the targets: `hidden[b, t]` is the state that predicts suffix token t,
i.e. the prefix's last real slot for t = 0 and suffix slot t − 1 after; so log-probs of the
response tokens come from `hidden` and the suffix tokens directly.

Letters: G prefix rows, P prefix slots, B suffix rows, R suffix slots, D width, N query heads,
K KV heads, H head dim.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from hpt_jax.models import rope
from hpt_jax.models.attention import attend
from hpt_jax.models.config import RematPolicy
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


def attention_masks(prefix_mask: Array, suffix_mask: Array, prefix_index: Array) -> tuple[Array, Array]:
  """The two attention masks of a layer.

  Args:
    prefix_mask: [G, P] bool, real prefix slots.
    suffix_mask: [B, R] bool, real suffix slots.
    prefix_index: [B] int, each suffix row's prefix row.
  Returns:
    (prefix [G, P, P]: causal over real slots; suffix [B, R, P + R]: the row's prefix's real slots,
    then causal over the row's real suffix slots).
  """
  p, r = prefix_mask.shape[1], suffix_mask.shape[1]
  causal = lambda n: jnp.tril(jnp.ones((n, n), bool))
  prefix = causal(p)[None] & prefix_mask[:, None, :]
  own_prefix = jnp.broadcast_to(prefix_mask[prefix_index][:, None, :], (suffix_mask.shape[0], r, p))
  suffix = jnp.concatenate([own_prefix, causal(r)[None] & suffix_mask[:, None, :]], axis=-1)
  return prefix, suffix


def _layer(layer: DecoderLayer, xp: Array, xs: Array, rope_p: tuple[Array, Array],
           rope_s: tuple[Array, Array], mask_p: Array, mask_s: Array, prefix_index: Array
           ) -> tuple[Array, Array]:
  """One decoder layer over both parts: xp [G, P, D], xs [B, R, D] -> the same shapes."""
  attn = layer.self_attn

  def project(x, cos, sin):
    normed = layer.input_layernorm(x)
    q = rope.apply_rope(attn.q_proj("btd,dnh->btnh", normed), cos, sin)
    k = rope.apply_rope(attn.k_proj("btd,dkh->btkh", normed), cos, sin)
    v = attn.v_proj("btd,dkh->btkh", normed)
    return constrain(q, ("act_batch", "act_length", "act_heads", "head_dim")), k, v

  qp, kp, vp = project(xp, *rope_p)
  qs, ks, vs = project(xs, *rope_s)
  out_p = attend(qp, kp, vp, mask_p, query_chunk=attn.query_chunk)
  # Each suffix row reads its prefix's keys/values (a gather; its gradient sums over the rows).
  keys = jnp.concatenate([kp[prefix_index], ks], axis=1)                        # [B, P + R, K, H]
  values = jnp.concatenate([vp[prefix_index], vs], axis=1)
  out_s = attend(qs, keys, values, mask_s, query_chunk=attn.query_chunk)

  def finish(x, out):
    x = x + attn.o_proj("btnh,nhd->btd", out)
    x = x + layer.mlp(layer.post_attention_layernorm(x))
    return constrain(x, _ACT)

  return finish(xp, out_p), finish(xs, out_s)


def shared_prefix_hidden(model: CausalLM, *, prefix_tokens: Array, prefix_mask: Array, suffix_tokens: Array,
                         suffix_mask: Array, prefix_index: Array) -> Array:
  """Final-norm hidden states that predict each suffix token.

  Args:
    model: the policy.
    prefix_tokens: [G, P] int32 prompts (any padding side; padded slots are masked).
    prefix_mask: [G, P] bool, True on real prompt tokens; a prefix row no suffix row uses may be
      all False.
    suffix_tokens: [B, R] int32 responses, left-aligned (slot t is response token t).
    suffix_mask: [B, R] bool, True on real response tokens (all False on padding rows).
    prefix_index: [B] int32 in [0, G), the prefix row of each suffix row.
  Returns:
    [B, R, D]: row b, slot t is the hidden state whose logits predict `suffix_tokens[b, t]`.
  """
  config = model.config
  chex.assert_rank([prefix_tokens, prefix_mask, suffix_tokens, suffix_mask, prefix_index], [2, 2, 2, 2, 1])
  chex.assert_equal_shape([prefix_tokens, prefix_mask])
  chex.assert_equal_shape([suffix_tokens, suffix_mask])
  chex.assert_equal_shape_prefix([suffix_tokens, prefix_index], 1)
  prefix_mask, suffix_mask = prefix_mask.astype(bool), suffix_mask.astype(bool)
  r = suffix_tokens.shape[1]

  table = model.embed_tokens.embedding[...]
  embed = lambda tokens: constrain(jnp.take(table, tokens, axis=0).astype(config.dtype), _ACT)
  xp, xs = embed(prefix_tokens), embed(suffix_tokens)
  inv_freq = rope.inverse_frequencies(head_dim=config.head_dim, theta=config.rope_theta,
                                      scaling=config.rope_scaling)
  rope_p = rope.rope_angles(prefix_positions(prefix_mask), inv_freq)
  rope_s = rope.rope_angles(suffix_positions(prefix_mask, prefix_index, r), inv_freq)
  mask_p, mask_s = attention_masks(prefix_mask, suffix_mask, prefix_index)

  graphdef, layer_state = nnx.split(model.layers)

  def layer_fn(carry, state):
    return _layer(nnx.merge(graphdef, state), *carry, rope_p, rope_s, mask_p, mask_s, prefix_index)

  if config.remat is not RematPolicy.NONE:
    layer_fn = jax.checkpoint(layer_fn, policy=config.remat.checkpoint_policy, prevent_cse=False)
  (xp, xs), _ = apply_layers(lambda carry, state: (layer_fn(carry, state), None), (xp, xs), layer_state,
                             scan=config.scan_layers)

  # Slot t predicts token t + 1; the first response token is predicted by the prompt's last token.
  p = prefix_mask.shape[1]
  last = p - 1 - jnp.argmax(prefix_mask[:, ::-1], axis=-1)                      # [G]
  first = jnp.take_along_axis(xp, last[:, None, None], axis=1)[prefix_index]    # [B, 1, D]
  hidden = jnp.concatenate([first, xs[:, :r - 1]], axis=1)
  return model.norm(constrain(hidden, _ACT))
