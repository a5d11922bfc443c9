"""Cached decoding (prefill + one-token steps through the KVCache) equals the uncached forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hpt_jax.models import init_cache, presets
from hpt_jax.models.testing import padded_batch, random_model, valid_max_abs_diff

PROMPT, STEPS, CACHE = 6, 16, 24  # cache longer than needed: unused slots must stay invisible


def test_prefill_then_16_steps_equals_uncached_forward():
  # Query-chunked attention (chunk 4) also runs here: the 22-token reference and the 6-token prefill
  # both end in a padded partial chunk, and must still equal the one-token steps.
  config = presets.tiny(num_layers=2, attention_query_chunk=4)
  graphdef, params = nnx.split(random_model(config, seed=1))
  # Left-padded prompts (as the sampler builds them) followed by STEPS generated tokens; row 1 also
  # has a pad slot inside the generated part to check key_mask is taken from attention_mask.
  tokens, positions, mask = padded_batch(np.random.default_rng(1), vocab_size=config.vocab_size,
                                         length=PROMPT + STEPS, left_pad=[0, 3, 5], right_pad=[0, 0, 0])
  mask[1, PROMPT + 4] = False
  positions = np.maximum(np.cumsum(mask, 1) - 1, 0).astype(np.int32)

  @jax.jit
  def uncached(params, tokens, positions, mask):
    model = nnx.merge(graphdef, params)
    hidden, cache = model(tokens, positions=positions, attention_mask=mask)
    assert cache is None
    return model.logits(hidden)

  @jax.jit
  def step(params, tokens, positions, mask, cache):
    model = nnx.merge(graphdef, params)
    hidden, cache = model(tokens, positions=positions, attention_mask=mask, cache=cache)
    return model.logits(hidden), cache

  reference = uncached(params, tokens, positions, mask)

  cache = init_cache(config, batch=3, length=CACHE)
  logits, cache = step(params, tokens[:, :PROMPT], positions[:, :PROMPT], mask[:, :PROMPT], cache)
  chunks = [logits]
  assert int(cache.index) == PROMPT
  for t in range(PROMPT, PROMPT + STEPS):
    sl = slice(t, t + 1)
    logits, cache = step(params, tokens[:, sl], positions[:, sl], mask[:, sl], cache)
    chunks.append(logits)
  cached = jnp.concatenate(chunks, axis=1)

  assert int(cache.index) == PROMPT + STEPS
  np.testing.assert_array_equal(np.asarray(cache.key_mask[:, :PROMPT + STEPS]), mask)
  assert not np.asarray(cache.key_mask[:, PROMPT + STEPS:]).any()
  assert valid_max_abs_diff(cached, reference, mask) <= 1e-5
  # Sanity: the comparison can fail (logits change along the sequence).
  assert valid_max_abs_diff(cached[:, 1:], reference[:, :-1], mask[:, 1:] & mask[:, :-1]) > 1e-3


def test_grow_keeps_the_written_slots_and_adds_empty_ones():
  config = presets.tiny(num_layers=2)
  rng = np.random.default_rng(3)
  cache = init_cache(config, batch=2, length=5)
  cache = cache.replace(
      k=tuple(jnp.asarray(rng.normal(size=x.shape), x.dtype) for x in cache.k),
      v=tuple(jnp.asarray(rng.normal(size=x.shape), x.dtype) for x in cache.v),
      key_mask=jnp.asarray(rng.random((2, 5)) < 0.5), index=jnp.int32(4))
  grown = cache.grow(8)
  assert grown.length == 8 and int(grown.index) == 4
  # Keys are stored [B, K, H, S]: compared in the values' [B, K, S, H] layout.
  as_slots = lambda c: tuple(np.swapaxes(np.asarray(x), 2, 3) for x in c.k) + c.v
  assert grown.k[0].shape == (2, config.num_kv_heads, config.head_dim, 8)
  for old, new in zip(as_slots(cache), as_slots(grown)):
    assert new.shape == (2, config.num_kv_heads, 8, config.head_dim)
    np.testing.assert_array_equal(np.asarray(new[:, :, :5]), np.asarray(old))
    np.testing.assert_array_equal(np.asarray(new[:, :, 5:]), 0.0)
  np.testing.assert_array_equal(np.asarray(grown.key_mask[:, :5]), np.asarray(cache.key_mask))
  assert not np.asarray(grown.key_mask[:, 5:]).any()
  with pytest.raises(ValueError, match="KVCache.grow: length 4"):
    cache.grow(4)
