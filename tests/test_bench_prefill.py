"""Prefill once per prompt (the sampler repeats the KV cache for the n samples) gives exactly what
prefilling the n repeated prompts gives: the speed fix changes no token and no log-prob."""

import dataclasses

import jax
import numpy as np
from flax import nnx

from hpt_jax import sampling
from hpt_jax.models import CausalLM, presets
from hpt_jax.sampling.lm import CausalLMDecoder


@dataclasses.dataclass(frozen=True)
class _NoRepeat:
  """The same decoder without `repeat_cache`: the loop falls back to prefilling every copy."""
  inner: CausalLMDecoder

  def init_cache(self, *, batch, length):
    return self.inner.init_cache(batch=batch, length=length)

  def __call__(self, params, tokens, **kw):
    return self.inner(params, tokens, **kw)


def test_prefill_once_equals_prefill_per_sample():
  config = presets.tiny(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                        num_kv_heads=1, head_dim=16, max_position_embeddings=64)
  decoder, params = CausalLMDecoder.from_model(CausalLM(config, rngs=nnx.Rngs(3)))
  prompts = [[5, 17, 33], [8, 9, 10, 11, 12], [40]]
  tokens, mask = sampling.left_pad(prompts, length=6, pad_id=0)
  kw = dict(seed=np.int32(7), eos_ids=np.asarray([2], np.int32), max_new_tokens=np.int32(8),
            strategy=sampling.Categorical(temperature=1.0), num_samples=4, response_len=8, pad_id=0)
  ids = np.arange(3, dtype=np.int32)
  fast = jax.device_get(sampling.jit_sample(decoder, params, tokens, mask, ids, **kw))
  slow = jax.device_get(sampling.jit_sample(_NoRepeat(decoder), params, tokens, mask, ids, **kw))
  assert hasattr(decoder, "repeat_cache") and not hasattr(_NoRepeat(decoder), "repeat_cache")
  np.testing.assert_array_equal(fast.tokens, slow.tokens)
  np.testing.assert_array_equal(fast.mask, slow.mask)
  np.testing.assert_allclose(fast.logprobs, slow.logprobs, atol=1e-5)
  np.testing.assert_array_equal(fast.prompt_tokens, np.repeat(tokens, 4, axis=0))
  # The 4 samples of a prompt differ (their keys differ), so the repeat did not collapse them.
  assert len({tuple(r) for r in fast.tokens[:4]}) > 1
