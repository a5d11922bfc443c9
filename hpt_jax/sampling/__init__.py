"""Rollout engine: sampling strategies, the jitted prefill + while-loop decoder, a host wrapper.

  strategies.py  Greedy / Categorical(temperature, top_k, top_p), the top-k / top-p filters.
  loop.py        `generate` (prefill + lax.while_loop), `sample` (n per prompt, per-row keys), `jit_sample`.
  lm.py          `CausalLMDecoder`: the Flax CausalLM as the loop's `DecodeModel`.
  sampler.py     `Sampler`: bucketing, left padding, device placement, detokenization.
"""

from hpt_jax.sampling.lm import CausalLMDecoder
from hpt_jax.sampling.loop import DecodeModel
from hpt_jax.sampling.loop import FinishReason
from hpt_jax.sampling.loop import SampleOutput
from hpt_jax.sampling.loop import generate
from hpt_jax.sampling.loop import jit_sample
from hpt_jax.sampling.loop import left_pad_positions
from hpt_jax.sampling.loop import phase_ends
from hpt_jax.sampling.loop import repeat_prompts
from hpt_jax.sampling.loop import row_keys
from hpt_jax.sampling.loop import sample
from hpt_jax.sampling.sampler import Buckets
from hpt_jax.sampling.sampler import Rollouts
from hpt_jax.sampling.sampler import Sampler
from hpt_jax.sampling.sampler import left_pad
from hpt_jax.sampling.strategies import Categorical
from hpt_jax.sampling.strategies import Greedy
from hpt_jax.sampling.strategies import Strategy
from hpt_jax.sampling.strategies import make_strategy
from hpt_jax.sampling.strategies import top_k_logits
from hpt_jax.sampling.strategies import top_p_logits

__all__ = [
    "Buckets",
    "Categorical",
    "CausalLMDecoder",
    "DecodeModel",
    "FinishReason",
    "Greedy",
    "Rollouts",
    "SampleOutput",
    "Sampler",
    "Strategy",
    "generate",
    "jit_sample",
    "left_pad",
    "left_pad_positions",
    "make_strategy",
    "phase_ends",
    "repeat_prompts",
    "row_keys",
    "sample",
    "top_k_logits",
    "top_p_logits",
]
