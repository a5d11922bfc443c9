"""Cached decoding (prefill + one-token steps through the KVCache) equals the uncached forward."""

import jax
import jax.numpy as jnp
import numpy as np
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
