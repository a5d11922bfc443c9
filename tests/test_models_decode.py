"""The decode path: cache-layout attention vs NumPy, last-position-only prefill, and a compiled decode
loop that updates the KV cache in place (no copies of cache buffers per step)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hpt_jax.models import init_cache, presets
from hpt_jax.models.attention import attend_cache
from hpt_jax.models.testing import numpy_attention, padded_batch, random_model


def test_attend_cache_matches_numpy_full_and_chunked():
  rng = np.random.default_rng(0)
  b, t, s, n, kv, h = 2, 5, 11, 4, 2, 8
  q = rng.normal(size=(b, t, n, h)).astype(np.float32)
  k, v = (rng.normal(size=(b, kv, s, h)).astype(np.float32) for _ in range(2))
  mask = rng.random((b, t, s)) < 0.7
  mask[0, 2] = False  # a query with no valid key stays finite
  # The reference takes k/v as [B, S, K, H]; the cache layouts are keys [B, K, H, S], values
  # [B, K, S, H].
  want = numpy_attention(q.astype(np.float64), k.swapaxes(1, 2), v.swapaxes(1, 2), mask)

  @jax.jit
  def both(q, k, v, mask):
    return attend_cache(q, k, v, mask), attend_cache(q, k, v, mask, query_chunk=2)

  full, chunked = both(q, k.swapaxes(2, 3), v, mask)
  valid = mask.any(-1)[..., None, None]
  assert np.max(np.where(valid, np.abs(np.asarray(full) - want), 0.0)) <= 1e-5
  assert np.isfinite(np.asarray(full)).all()
  np.testing.assert_allclose(np.asarray(chunked), np.asarray(full), atol=1e-6)


def test_attend_cache_one_query_matches_numpy():
  # T = 1 (decoding) takes its own path (softmax normalised after the product with V).
  rng = np.random.default_rng(1)
  b, s, n, kv, h = 4, 9, 6, 2, 8
  q = rng.normal(size=(b, 1, n, h)).astype(np.float32)
  k, v = (rng.normal(size=(b, kv, s, h)).astype(np.float32) for _ in range(2))
  k[1] *= 100.0  # large scores: the softmax must subtract its maximum (exp would overflow)
  mask = rng.random((b, 1, s)) < 0.6
  mask[:, :, 0] = True
  mask[3] = False  # a row with no valid key: the uniform average, finite
  # The reference takes k/v as [B, S, K, H]; the cache layouts are keys [B, K, H, S], values
  # [B, K, S, H].
  want = numpy_attention(q.astype(np.float64), k.swapaxes(1, 2), v.swapaxes(1, 2), mask)
  got = np.asarray(jax.jit(attend_cache)(q, k.swapaxes(2, 3), v, mask))
  np.testing.assert_allclose(got[:3], want[:3], rtol=1e-5, atol=1e-5)
  # Row 1's scores exceed 88, where float32 exp overflows: the test fails without the max shift.
  scores = np.einsum("nh,ksh->nks", q[1, 0], k[1]) / np.sqrt(h)
  assert scores[:, :, mask[1, 0]].max() > 88.0
  uniform = v[3].mean(axis=1)                                  # [K, H]: every slot weighs 1 / S
  np.testing.assert_allclose(got[3, 0], np.repeat(uniform, n // kv, axis=0), rtol=1e-5, atol=1e-6)


def test_last_only_prefill_equals_full_prefill():
  config = presets.tiny(num_layers=2)
  graphdef, params = nnx.split(random_model(config, seed=2))
  tokens, positions, mask = padded_batch(np.random.default_rng(2), vocab_size=config.vocab_size,
                                         length=7, left_pad=[0, 3], right_pad=[0, 0])

  @jax.jit
  def prefill(params, tokens, positions, mask):
    model = nnx.merge(graphdef, params)
    cache = init_cache(config, batch=2, length=10)
    full, full_cache = model(tokens, positions=positions, attention_mask=mask, cache=cache)
    last, last_cache = model(tokens, positions=positions, attention_mask=mask, cache=cache,
                             last_only=True)
    return full, full_cache, last, last_cache

  full, full_cache, last, last_cache = prefill(params, tokens, positions, mask)
  assert last.shape == (2, 1, config.hidden_size)
  np.testing.assert_allclose(np.asarray(last), np.asarray(full[:, -1:]), atol=1e-6)
  # Every layer's keys/values (the last layer's included) are still written for all positions.
  for a, b in zip(jax.tree.leaves(full_cache), jax.tree.leaves(last_cache)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert float(np.abs(np.asarray(full[:, -1] - full[:, -2])).max()) > 1e-3  # positions differ


def test_decode_loop_updates_cache_in_place():
  config = presets.tiny(num_layers=2)
  graphdef, params = nnx.split(random_model(config, seed=3))
  batch, length = 4, 24
  cache = init_cache(config, batch=batch, length=length)
  one = jnp.ones((batch, 1), jnp.int32)

  def loop(params, cache):
    def body(_, cache):
      model = nnx.merge(graphdef, params)
      _, cache = model(one, positions=one, attention_mask=one.astype(bool), cache=cache)
      return cache
    return jax.lax.fori_loop(0, 8, body, cache)

  hlo = jax.jit(loop).lower(params, cache).compile().as_text()
  buffer = f"f32[{batch},{config.num_kv_heads},{length},{config.head_dim}]"
  copies = [line for line in hlo.splitlines()
            if re.search(r"= " + re.escape(buffer) + r"\S* copy\(", line)]
  # The only copies allowed are the 2 * L of the entry parameters into the loop (not donated).
  assert len(copies) <= 2 * config.num_layers, "\n".join(copies)
  assert "dynamic-update-slice" in hlo  # the writes are there (the check above can fail)


def _while_line(stablehlo: str, *, carrying: str) -> str:
  """The one `stablehlo.while` op (its operands and carried types) whose carry holds `carrying`."""
  loops = [line for line in stablehlo.splitlines() if "stablehlo.while" in line and carrying in line]
  assert len(loops) == 1, loops
  return loops[0]


def test_sampler_loop_carries_per_layer_weights_not_the_stack():
  # XLA:CPU copies a slice of the stacked [L, ...] weights in every loop step; the decoder cuts the
  # per-layer weights once before the loop, so the loop carries per-layer kernels, never the stack.
  # (Checked on the lowered program: what the loop is given is decided there, and lowering is cheap.)
  from hpt_jax import sampling
  from hpt_jax.sampling.lm import CausalLMDecoder
  config = presets.tiny(num_layers=2)
  model = random_model(config, seed=4)
  d, f = config.hidden_size, config.intermediate_size
  stacked = f"tensor<2x{f}x{d}xf32>"  # down_proj, [L, F, D]
  layer = f"tensor<{d}x2x{f}xf32>"    # one layer's stacked gate|up kernel
  tokens, mask = sampling.left_pad([[3, 4, 5], [6]], length=4, pad_id=0)
  cache_buffer = f"tensor<2x{config.num_kv_heads}x8x{config.head_dim}xf32>"  # B=2, S = 4 + 4
  loops = {}
  for hoist in (True, False):
    decoder, params = CausalLMDecoder.from_model(model, hoist_layers=hoist)
    text = sampling.jit_sample.lower(
        decoder, params, tokens, mask, np.arange(2, dtype=np.int32), seed=np.int32(0),
        eos_ids=np.asarray([1], np.int32), max_new_tokens=np.int32(4),
        strategy=sampling.Categorical(), num_samples=1, response_len=4, pad_id=0).as_text()
    loops[hoist] = _while_line(text, carrying=cache_buffer)  # the decode loop
  assert stacked not in loops[True] and layer in loops[True], loops[True]
  assert stacked in loops[False], loops[False]  # the check sees the stack when it is there


def test_slot_rows_inverts_packed_indices():
  from hpt_jax.models.packed_prefill import packed_indices, slot_rows
  mask = np.random.default_rng(7).random((4, 6)) < 0.5
  mask[:, -1] = True
  real = int(mask.sum())
  for r in (real, real + 3):
    idx, valid = (np.asarray(a) for a in packed_indices(jnp.asarray(mask), r))
    slots = np.asarray(slot_rows(jnp.asarray(mask), r))
    want = np.full(mask.size, r)                  # a NumPy walk over the flat slots
    row = 0
    for j, m in enumerate(mask.reshape(-1)):
      if m:
        want[j], row = row, row + 1
    np.testing.assert_array_equal(slots, want)
    np.testing.assert_array_equal(slots[idx[valid]], np.arange(real))


def test_packed_prefill_equals_padded_prefill():
  # Per-token work on the 9 real tokens of a [3, 6] left-padded batch (R = 9 exactly, and R = 14
  # with 5 filler rows) must give the plain prefill's last hidden state and the same cache.
  from hpt_jax.models.packed_prefill import packed_prefill
  config = presets.tiny(num_layers=2)
  graphdef, params = nnx.split(random_model(config, seed=5))
  tokens, positions, mask = padded_batch(np.random.default_rng(5), vocab_size=config.vocab_size,
                                         length=6, left_pad=[4, 0, 5], right_pad=[0, 0, 0])
  assert mask.sum() == 2 + 6 + 1

  @jax.jit
  def both(params, tokens, positions, mask):
    model = nnx.merge(graphdef, params)
    cache = init_cache(config, batch=3, length=9)
    layers = model.cached_layers()
    plain = model(tokens, positions=positions, attention_mask=mask, cache=cache, last_only=True,
                  cached_layers=layers)
    packed = [packed_prefill(model, tokens, positions=positions, attention_mask=mask, cache=cache,
                             cached_layers=layers, packed_tokens=r) for r in (9, 14)]
    return plain, packed

  (hidden, cache), packed = both(params, tokens, positions, mask)
  for got_hidden, got_cache in packed:
    assert got_hidden.shape == hidden.shape == (3, 1, config.hidden_size)
    np.testing.assert_allclose(np.asarray(got_hidden), np.asarray(hidden), atol=1e-5)
    assert int(got_cache.index) == int(cache.index) == 6
    np.testing.assert_array_equal(np.asarray(got_cache.key_mask), np.asarray(cache.key_mask))
    # Keys compared in the values' [B, K, S, H] layout.
    as_slots = lambda c: tuple(np.swapaxes(np.asarray(x), 2, 3) for x in c.k) + c.v
    for a, b in zip(as_slots(got_cache), as_slots(cache)):
      # Padded slots hold zeros in the packed cache and projections of pad tokens in the plain one;
      # both are masked, so only real slots must agree.
      real = np.asarray(mask)[:, None, :, None]
      np.testing.assert_allclose(np.where(real, np.asarray(a)[:, :, :6], 0),
                                 np.where(real, np.asarray(b)[:, :, :6], 0), atol=1e-5)
  assert float(np.abs(np.asarray(hidden[0] - hidden[1])).max()) > 1e-3  # rows differ: can fail
  model = nnx.merge(graphdef, params)
  with pytest.raises(ValueError, match="packed_tokens must be in"):
    packed_prefill(model, tokens, positions=positions, attention_mask=mask,
                   cache=init_cache(config, batch=3, length=9), cached_layers=model.cached_layers(),
                   packed_tokens=19)
