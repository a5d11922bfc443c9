"""Per-layer rematerialisation changes memory, not maths: gradients equal the no-remat ones."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hpt_jax.models import RematPolicy, presets
from hpt_jax.models.testing import padded_batch, random_model


def test_full_remat_gradients_equal_no_remat():
  small = dict(num_layers=1, hidden_size=64, intermediate_size=96, num_heads=4, num_kv_heads=2,
               head_dim=16, vocab_size=64)
  tokens, positions, mask = padded_batch(np.random.default_rng(0), vocab_size=64, length=8,
                                         left_pad=[2, 0], right_pad=[0, 1])
  grads = {}
  for policy in (RematPolicy.NONE, RematPolicy.FULL):
    graphdef, params = nnx.split(random_model(presets.tiny(**small, remat=policy), seed=0))

    def loss(params, graphdef=graphdef):
      model = nnx.merge(graphdef, params)
      hidden, _ = model(jnp.asarray(tokens), positions=jnp.asarray(positions),
                        attention_mask=jnp.asarray(mask))
      return jnp.sum(jax.nn.log_softmax(model.logits(hidden))[..., 0] * mask)

    grads[policy] = jax.tree.leaves(jax.jit(jax.grad(loss))(params))
  for full, none in zip(grads[RematPolicy.FULL], grads[RematPolicy.NONE]):
    np.testing.assert_allclose(np.asarray(full), np.asarray(none), atol=1e-5)
  assert max(float(jnp.max(jnp.abs(g))) for g in grads[RematPolicy.NONE]) > 1e-2


def test_layer_loop_equals_layer_scan():
  """`scan_layers=False` (a Python loop over the layers) is the scan's arithmetic: same hidden
  states, collected layer stream and gradients."""
  small = dict(num_layers=2, hidden_size=64, intermediate_size=96, num_heads=4, num_kv_heads=2,
               head_dim=16, vocab_size=64)
  tokens, positions, mask = padded_batch(np.random.default_rng(1), vocab_size=64, length=8,
                                         left_pad=[2, 0], right_pad=[0, 1])
  out = {}
  for scan in (True, False):
    graphdef, params = nnx.split(random_model(presets.tiny(**small, scan_layers=scan), seed=0))

    def loss(params, graphdef=graphdef):
      model = nnx.merge(graphdef, params)
      hidden, _ = model(jnp.asarray(tokens), positions=jnp.asarray(positions),
                        attention_mask=jnp.asarray(mask))
      return jnp.sum(jax.nn.log_softmax(model.logits(hidden))[..., 0] * mask), hidden

    (_, hidden), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    stream = nnx.merge(graphdef, params).hidden_states(
        jnp.asarray(tokens), positions=jnp.asarray(positions), attention_mask=jnp.asarray(mask))
    out[scan] = (hidden, stream, jax.tree.leaves(grads))
  np.testing.assert_allclose(out[False][0], out[True][0], atol=1e-5)
  assert out[False][1].shape == out[True][1].shape == (3, 2, 8, 64)
  np.testing.assert_allclose(out[False][1], out[True][1], atol=1e-5)
  for loop, scan in zip(out[False][2], out[True][2]):
    np.testing.assert_allclose(np.asarray(loop), np.asarray(scan), atol=1e-5)
  assert max(float(jnp.max(jnp.abs(g))) for g in out[True][2]) > 1e-2
