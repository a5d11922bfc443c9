"""The evaluator's real `Backend`: the jitted sampler's host wrapper.

`SamplerBackend` adapts `hpt_jax.sampling.Sampler`: the protocol's temperature / top-p become a sampling
strategy, the n samples of a prompt come back in adjacent rows and are regrouped per problem.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hpt_jax import sampling
from hpt_jax.evaluation import benchmarks as bm
from hpt_jax.evaluation.evaluator import Completion


class SamplerBackend:
  """`Backend` over a `sampling.Sampler` that has a tokenizer.

  Args:
    sampler: the host wrapper; its buckets fix the static prompt / response lengths.
    add_special_tokens: how rendered prompts are encoded. False for chat templates (the template already
      wrote every special token); True for plain-text templates that rely on the tokenizer's BOS
      (the Llama zero template).
  """

  def __init__(self, sampler: sampling.Sampler, *, add_special_tokens: bool = False):
    if sampler.tokenizer is None:
      raise ValueError("SamplerBackend needs a Sampler built with a tokenizer (texts in and out)")
    self.sampler = sampler
    self.add_special_tokens = add_special_tokens

  def _encode(self, prompt: str) -> list[int]:
    ids = self.sampler.tokenizer.encode(prompt, add_special_tokens=self.add_special_tokens)
    if not ids:
      raise ValueError(f"prompt {prompt[:80]!r} encodes to no tokens")
    return list(ids)

  def prompt_bucket(self, prompt: str) -> int:
    return self.sampler.buckets.prompt_len(len(self._encode(prompt)))

  def generate(self, params: Any, prompts: Sequence[str], *, protocol: bm.Protocol,
               prompt_ids: Sequence[int], seed: int) -> list[list[Completion]]:
    strategy = sampling.make_strategy(temperature=protocol.temperature, top_p=protocol.top_p)
    n = protocol.num_samples
    rollouts = self.sampler.generate(
        params, [self._encode(p) for p in prompts], strategy=strategy, max_new_tokens=protocol.max_new_tokens, num_samples=n,
        seed=seed, prompt_ids=list(prompt_ids))
    out = rollouts.output
    lengths = np.asarray(out.lengths)
    truncated = np.asarray(out.finish_reason) == int(sampling.FinishReason.LENGTH)
    # The sampler puts the n samples of a prompt in adjacent rows.
    return [[Completion(text=rollouts.texts[p * n + s], length=int(lengths[p * n + s]),
                        truncated=bool(truncated[p * n + s])) for s in range(n)]
            for p in range(len(prompts))]
