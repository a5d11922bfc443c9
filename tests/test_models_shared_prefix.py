"""The shared-prompt forward equals the plain forward over `prompt ++ response` rows: values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hpt_jax.models import RematPolicy, presets
from hpt_jax.models.shared_prefix import shared_prefix_hidden
from hpt_jax.models.testing import random_model

SMALL = dict(num_layers=2, hidden_size=64, intermediate_size=96, num_heads=4, num_kv_heads=2, head_dim=16,
             vocab_size=64)


def _layouts(rng):
  """Three prompts (lengths 5, 7, 3; one unused prefix slot), six suffix rows of lengths 1..6 (one a
  padding row), as (shared layout, plain rows, per-row (prompt length, response length))."""
  prompts = [rng.integers(1, 64, n) for n in (5, 7, 3)]
  owners = [0, 0, 2, 1, 2, 2]
  responses = [rng.integers(1, 64, n) for n in (4, 6, 1, 5, 3, 2)]
  g, p, r = 4, 8, 6
  prefix_tokens = np.zeros((g, p), np.int32)
  prefix_mask = np.zeros((g, p), bool)
  for i, pr in enumerate(prompts):
    prefix_tokens[i, :len(pr)], prefix_mask[i, :len(pr)] = pr, True
  b = len(owners) + 1  # + one padding row
  suffix_tokens = np.zeros((b, r), np.int32)
  suffix_mask = np.zeros((b, r), bool)
  for i, resp in enumerate(responses):
    suffix_tokens[i, :len(resp)], suffix_mask[i, :len(resp)] = resp, True
  prefix_index = np.array(owners + [3], np.int32)  # the padding row points at the unused slot
  length = p + r
  tokens = np.zeros((len(owners), length), np.int32)
  mask = np.zeros((len(owners), length), bool)
  sizes = []
  for i, (o, resp) in enumerate(zip(owners, responses)):
    row = np.concatenate([prompts[o], resp])
    tokens[i, :len(row)], mask[i, :len(row)] = row, True
    sizes.append((len(prompts[o]), len(resp)))
  positions = np.where(mask, np.arange(length)[None], 0).astype(np.int32)
  shared = dict(prefix_tokens=prefix_tokens, prefix_mask=prefix_mask, suffix_tokens=suffix_tokens,
                suffix_mask=suffix_mask, prefix_index=prefix_index)
  return jax.tree.map(jnp.asarray, shared), (tokens, positions, mask), sizes


def _plain_at_targets(hidden, sizes):
  """Plain hidden states [rows, L, D] -> the ones predicting each response token, row by row."""
  return [hidden[i, pl - 1:pl + rl - 1] for i, (pl, rl) in enumerate(sizes)]


# SAVE_DOTS (the main job's policy) runs the layer under jax.checkpoint; the train-step tests run NONE.
# scan_layers=False: both passes' layers in a Python loop (the train-step tests run the scan).
# packed_tokens=21: the responses' per-token work on exactly their 21 real tokens (of 7 x 6 slots).
@pytest.mark.parametrize("scan_layers, packed_tokens", [(True, None), (False, None), (True, 21)])
def test_shared_prefix_equals_plain_forward_and_gradient(scan_layers, packed_tokens):
  config = presets.tiny(**SMALL, remat=RematPolicy.SAVE_DOTS, scan_layers=scan_layers)
  graphdef, params = nnx.split(random_model(config, seed=1, scale=0.2))
  shared, (tokens, positions, mask), sizes = _layouts(np.random.default_rng(0))
  assert int(shared["suffix_mask"].sum()) == 21
  weights = jnp.asarray(np.random.default_rng(1).normal(size=(7, 6, config.hidden_size)), jnp.float32)

  def shared_loss(params):
    hidden = shared_prefix_hidden(nnx.merge(graphdef, params), **shared, packed_tokens=packed_tokens)
    logp = jax.nn.log_softmax(nnx.merge(graphdef, params).logits(hidden))
    picked = jnp.take_along_axis(logp, shared["suffix_tokens"][..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(shared["suffix_mask"], picked, 0.0)) + jnp.sum(
        jnp.where(shared["suffix_mask"][..., None], hidden * weights, 0.0)), hidden

  def plain_loss(params):
    model = nnx.merge(graphdef, params)
    hidden, _ = model(jnp.asarray(tokens), positions=jnp.asarray(positions), attention_mask=jnp.asarray(mask))
    logp = jax.nn.log_softmax(model.logits(hidden))
    total = 0.0
    for i, (pl, rl) in enumerate(sizes):
      targets = jnp.asarray(tokens[i, pl:pl + rl])
      total += jnp.sum(jnp.take_along_axis(logp[i, pl - 1:pl + rl - 1], targets[:, None], axis=-1))
      total += jnp.sum(hidden[i, pl - 1:pl + rl - 1] * weights[i, :rl])
    return total, hidden

  (loss_s, hidden_s), grads_s = jax.jit(jax.value_and_grad(shared_loss, has_aux=True))(params)
  (loss_p, hidden_p), grads_p = jax.jit(jax.value_and_grad(plain_loss, has_aux=True))(params)
  for i, want in enumerate(_plain_at_targets(np.asarray(hidden_p), sizes)):
    np.testing.assert_allclose(np.asarray(hidden_s[i, :len(want)]), want, atol=2e-5, rtol=1e-5)
  assert np.isfinite(np.asarray(hidden_s)).all()  # the padding row and unused prefix slot included
  np.testing.assert_allclose(float(loss_s), float(loss_p), rtol=1e-5)
  flat_s, flat_p = jax.tree.leaves(grads_s), jax.tree.leaves(grads_p)
  for gs, gp in zip(flat_s, flat_p):  # float32 sums in another order: within 1e-5 of the leaf's scale
    np.testing.assert_allclose(np.asarray(gs), np.asarray(gp), atol=1e-5 * float(jnp.max(jnp.abs(gp))))
  assert max(float(jnp.max(jnp.abs(g))) for g in flat_p) > 1e-2


def test_suffix_rows_do_not_see_other_prompts_or_later_tokens():
  """Changing another prompt, or a later response token, leaves a row's hidden states unchanged."""
  config = presets.tiny(**SMALL)
  model = random_model(config, seed=2, scale=0.2)
  shared, _, _ = _layouts(np.random.default_rng(3))
  fn = jax.jit(lambda s: shared_prefix_hidden(model, **s))
  base = np.asarray(fn(shared))
  other = dict(shared, prefix_tokens=shared["prefix_tokens"].at[1].set(9))  # prompt 1: row 3 only
  changed = np.asarray(fn(other))
  rows_of_prompt_1 = [3]
  keep = [i for i in range(base.shape[0]) if i not in rows_of_prompt_1]
  np.testing.assert_allclose(changed[keep], base[keep], atol=1e-6)
  assert np.abs(changed[3] - base[3]).max() > 1e-3
  later = dict(shared, suffix_tokens=shared["suffix_tokens"].at[1, 4].set(7))  # row 1, token 4
  moved = np.asarray(fn(later))
  np.testing.assert_allclose(moved[1, :5], base[1, :5], atol=1e-6)  # slots <= 4 predict tokens <= 4
  assert np.abs(moved[1, 5] - base[1, 5]).max() > 1e-3
