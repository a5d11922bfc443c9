"""The real Backend (jitted sampler host wrapper) and Grader (training verifier / option letters).

The sampler runs a fake table model over a 12-token letter vocabulary, so the expected greedy text is
derivable by hand: after token x the model prefers x+1, and after "j" it prefers EOS.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np

from hpt_jax import sampling
from hpt_jax.evaluation import backends
from hpt_jax.evaluation import benchmarks as bm

_LETTERS = "abcdefghij"
_EOS, _PAD, _V = 0, 1, 12


class LetterTokenizer:
  def encode(self, text, add_special_tokens=False):
    # With special tokens, a leading "a" stands in for a BOS token.
    return [2] * add_special_tokens + [2 + _LETTERS.index(c) for c in text]

  def decode(self, ids, skip_special_tokens=True):
    assert skip_special_tokens
    return "".join(_LETTERS[i - 2] for i in ids if i >= 2)


@dataclasses.dataclass(frozen=True)
class NextLetterModel:
  """logits = params["table"][last token]; no real cache needed beyond a write index."""

  def init_cache(self, *, batch, length):
    del batch, length
    return jnp.zeros((), jnp.int32)

  def __call__(self, params, tokens, *, positions, attention_mask, cache):
    del positions, attention_mask
    return params["table"][tokens[:, -1]].astype(jnp.float32), cache + tokens.shape[1]


def _params(sharpness):
  table = np.zeros((_V, _V), np.float32)
  for tok in range(2, _V - 1):
    table[tok, tok + 1] = sharpness
  table[_V - 1, _EOS] = sharpness  # "j" -> EOS
  table[_EOS, _EOS] = table[_PAD, _EOS] = sharpness
  return {"table": jnp.asarray(table)}


def _backend(add_special_tokens=False):
  sampler = sampling.Sampler(NextLetterModel(), eos_ids=[_EOS], pad_id=_PAD, tokenizer=LetterTokenizer(),
                             buckets=sampling.Buckets(prompt=(4, 8), response=(4, 16)))
  return backends.SamplerBackend(sampler, add_special_tokens=add_special_tokens)


def test_sampler_backend_greedy_texts_lengths_truncation():
  backend = _backend()
  assert backend.prompt_bucket("ab") == 4 and backend.prompt_bucket("abcdefg") == 8
  assert _backend(add_special_tokens=True).prompt_bucket("abcd") == 8  # 4 letters + "BOS"
  greedy = bm.Protocol(temperature=0.0, num_samples=2, max_new_tokens=9)
  out = backend.generate(_params(50.0), ["ab", "h"], protocol=greedy, prompt_ids=[0, 1], seed=0)
  # "ab" -> c..j then EOS: 8 letters + EOS = 9 tokens, stopped by EOS; "h" -> "ij" + EOS.
  assert [[(c.text, c.length, c.truncated) for c in row] for row in out] == [
      [("cdefghij", 9, False)] * 2, [("ij", 3, False)] * 2]
  short = dataclasses.replace(greedy, max_new_tokens=4)
  (row,) = backend.generate(_params(50.0), ["ab"], protocol=short, prompt_ids=[0], seed=0)
  assert [(c.text, c.length, c.truncated) for c in row] == [("cdef", 4, True)] * 2


def test_sampler_backend_samples_do_not_depend_on_batch_company():
  # What resume relies on: a problem's samples depend only on (seed, prompt id, sample index).
  backend = _backend()
  proto = bm.Protocol(temperature=1.0, top_p=1.0, num_samples=3, max_new_tokens=12)
  params = _params(1.0)  # soft: genuinely random continuations
  together = backend.generate(params, ["a", "bc", "d"], protocol=proto, prompt_ids=[4, 5, 6], seed=42)
  # Same batch shape (one compiled program), different neighbours and position of the "bc" problem.
  moved = backend.generate(params, ["bc", "ef", "ef"], protocol=proto, prompt_ids=[5, 9, 9], seed=42)
  assert together[1] == moved[0]
  assert together[0] != moved[1]
  texts = {c.text for row in together for c in row}
  assert len(texts) > 2  # really sampled, not a constant
