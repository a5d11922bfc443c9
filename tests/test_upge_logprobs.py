"""Token log-probs / entropy vs NumPy, chunked == unchunked, and the chunked path's peak memory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hpt_jax import upge


def np_logp_entropy(logits, targets, temperature):
  z = logits / temperature
  z = z - z.max(-1, keepdims=True)
  logsm = z - np.log(np.exp(z).sum(-1, keepdims=True))
  logp = np.take_along_axis(logsm, targets[..., None], -1)[..., 0]
  return logp, -(np.exp(logsm) * logsm).sum(-1)


def _case(b=2, t=5, d=4, v=11, seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(b, t, d)), rng.normal(size=(d, v)), rng.integers(0, v, (b, t))


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_token_logprobs_and_entropy(temperature, x64):
  h, w, y = _case()
  logits = h @ w
  logp, ent = upge.token_logprobs(jnp.asarray(logits), jnp.asarray(y), temperature=temperature)
  ref_logp, ref_ent = np_logp_entropy(logits, y, temperature)
  np.testing.assert_allclose(logp, ref_logp, rtol=1e-12)
  np.testing.assert_allclose(ent, ref_ent, rtol=1e-12)
  np.testing.assert_allclose(upge.entropy_from_logits(jnp.asarray(logits), temperature=temperature), ref_ent,
                             rtol=1e-12)


def test_chunked_equals_unchunked_values_and_gradients(x64):
  h, w, y = _case()  # B·T = 10 positions, chunk 3: the last chunk is padded

  def loss(fn):
    def inner(h, w):
      logp, ent = fn(h, w)
      return jnp.sum(logp * jnp.arange(5.0)) + 0.3 * jnp.sum(ent)  # weights so that every position matters
    return jax.jit(jax.value_and_grad(inner, argnums=(0, 1)))

  chunked = loss(lambda h, w: upge.chunked_token_logprobs(h, w, jnp.asarray(y), chunk_size=3, temperature=0.7))
  full = loss(lambda h, w: upge.token_logprobs(jnp.einsum("btd,dv->btv", h, w), jnp.asarray(y), temperature=0.7))
  (v1, (gh1, gw1)), (v2, (gh2, gw2)) = chunked(jnp.asarray(h), jnp.asarray(w)), full(jnp.asarray(h), jnp.asarray(w))
  np.testing.assert_allclose(v1, v2, rtol=1e-12)
  np.testing.assert_allclose(gh1, gh2, rtol=1e-11, atol=1e-13)
  np.testing.assert_allclose(gw1, gw2, rtol=1e-11, atol=1e-13)
  logp, ent = upge.chunked_token_logprobs(jnp.asarray(h), jnp.asarray(w), jnp.asarray(y), chunk_size=3)
  ref_logp, ref_ent = np_logp_entropy(h @ w, y, 1.0)
  np.testing.assert_allclose(logp, ref_logp, rtol=1e-12)
  np.testing.assert_allclose(ent, ref_ent, rtol=1e-12)


def test_bf16_hidden_gives_float32_logprobs():
  h, w, y = _case()
  logp, ent = upge.chunked_token_logprobs(jnp.asarray(h, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16),
                                          jnp.asarray(y), chunk_size=4)
  assert logp.dtype == ent.dtype == jnp.float32
  ref_logp, _ = np_logp_entropy(np.asarray(jnp.asarray(h, jnp.bfloat16), float) @
                                np.asarray(jnp.asarray(w, jnp.bfloat16), float), y, 1.0)
  np.testing.assert_allclose(logp, ref_logp, rtol=1e-4, atol=1e-4)


def test_chunked_peak_memory_never_holds_full_logits():
  """151,936-token vocabulary over 8,192 positions: compile value_and_grad and read XLA's temp size.

  The full float32 logits are 4.75 GiB; the unchunked path needs several times that, the chunked one
  (512 positions per chunk) holds a few [C, V] buffers (about 1.2 GiB). Nothing is allocated: shapes are abstract.
  """
  b, t, d, v, chunk = 1, 8192, 64, 151_936, 512
  h = jax.ShapeDtypeStruct((b, t, d), jnp.float32)
  w = jax.ShapeDtypeStruct((d, v), jnp.float32)
  y = jax.ShapeDtypeStruct((b, t), jnp.int32)

  def temp_bytes(logprob_fn):
    def loss(h, w, y):
      logp, ent = logprob_fn(h, w, y)
      return logp.sum() + ent.sum()
    compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(h, w, y).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  full_logits = b * t * v * 4
  chunked = temp_bytes(lambda h, w, y: upge.chunked_token_logprobs(h, w, y, chunk_size=chunk))
  unchunked = temp_bytes(lambda h, w, y: upge.token_logprobs(jnp.einsum("btd,dv->btv", h, w), y))
  print(f"temp bytes: chunked {chunked / 2**20:.0f} MiB, unchunked {unchunked / 2**20:.0f} MiB, "
        f"full logits {full_logits / 2**20:.0f} MiB")
  assert unchunked >= full_logits  # the measurement does see [B, T, V] when it exists
  assert chunked < full_logits / 2
  assert chunked < 6 * chunk * v * 4  # a few [C, V] buffers (logits, softmax, their cotangents)


def test_bad_inputs_name_the_argument():
  h, w, y = _case()
  with pytest.raises(ValueError, match=r"unembedding: expected leading dim D=4"):
    upge.chunked_token_logprobs(jnp.asarray(h), jnp.asarray(w.T), jnp.asarray(y), chunk_size=2)
  with pytest.raises(ValueError, match=r"targets: expected an integer dtype"):
    upge.chunked_token_logprobs(jnp.asarray(h), jnp.asarray(w), jnp.asarray(y, float), chunk_size=2)
  with pytest.raises(ValueError, match=r"targets: expected shape \(2, 5\)"):
    upge.token_logprobs(jnp.asarray(h @ w), jnp.asarray(y[:, :4]))
  with pytest.raises(ValueError, match=r"hidden: expected rank 3"):
    upge.chunked_token_logprobs(jnp.asarray(h[0]), jnp.asarray(w), jnp.asarray(y), chunk_size=2)
  with pytest.raises(ValueError, match=r"chunk_size: must be >= 1"):
    upge.chunked_token_logprobs(jnp.asarray(h), jnp.asarray(w), jnp.asarray(y), chunk_size=0)
