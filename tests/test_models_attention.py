"""GQA attention vs a float64 NumPy reference, query-chunked == full, and the bf16 dtype policy."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hpt_jax.models import DTypePolicy, presets
from hpt_jax.models.attention import attend
from hpt_jax.models.testing import numpy_attention, padded_batch, random_model, valid_max_abs_diff


def test_attention_full_and_chunked_match_numpy_and_each_other():
  rng = np.random.default_rng(0)
  b, t, s, n, kv, h = 2, 10, 13, 4, 2, 8
  q, k, v = (rng.normal(size=shape).astype(np.float32)
             for shape in ((b, t, n, h), (b, s, kv, h), (b, s, kv, h)))
  mask = rng.random((b, t, s)) < 0.7
  mask[1, 3] = False  # a query with no valid key (padding) must stay finite
  want = numpy_attention(q.astype(np.float64), k, v, mask)

  @jax.jit
  def both(q, k, v, mask):
    full = attend(q, k, v, mask)
    chunked = attend(q, k, v, mask, query_chunk=4)  # 10 = 4 + 4 + 2: exercises the padded chunk
    loss = lambda chunk: lambda q: jnp.sum(jnp.sin(attend(q, k, v, mask, query_chunk=chunk)))
    return full, chunked, jax.grad(loss(None))(q), jax.grad(loss(4))(q)

  full, chunked, grad_full, grad_chunked = both(q, k, v, mask)
  valid = mask.any(-1)
  assert valid_max_abs_diff(full, want, valid) <= 1e-5
  assert np.isfinite(np.asarray(full)).all()
  assert float(jnp.max(jnp.abs(chunked - full))) <= 1e-6
  assert float(jnp.max(jnp.abs(grad_chunked - grad_full))) <= 1e-6
  assert float(jnp.max(jnp.abs(grad_full))) > 1e-3


def test_bfloat16_policy_keeps_float32_logits_and_tracks_float32_model():
  small = dict(num_layers=1, hidden_size=64, intermediate_size=96, num_heads=4, num_kv_heads=2,
               head_dim=16, vocab_size=64)
  fp32 = random_model(presets.tiny(**small), seed=3)
  bf16 = random_model(presets.tiny(**small, dtype_policy=DTypePolicy.BFLOAT16), seed=3)
  tokens, positions, mask = padded_batch(np.random.default_rng(3), vocab_size=64, length=8,
                                         left_pad=[2, 0], right_pad=[0, 1])

  def run(model):
    hidden, _ = model(jnp.asarray(tokens), positions=jnp.asarray(positions),
                      attention_mask=jnp.asarray(mask))
    return hidden, model.logits(hidden)

  hidden16, logits16 = nnx.jit(run)(bf16)
  _, logits32 = nnx.jit(run)(fp32)
  assert bf16.layers.mlp.up_proj.kernel.get_value().dtype == jnp.bfloat16
  assert hidden16.dtype == jnp.bfloat16 and logits16.dtype == jnp.float32
  # Same draws rounded to bf16: logits agree to bf16 precision of O(1) activations.
  scale = float(np.abs(np.asarray(logits32)).max())
  assert valid_max_abs_diff(logits16, logits32, mask) <= 0.05 * scale
