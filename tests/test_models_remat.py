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
