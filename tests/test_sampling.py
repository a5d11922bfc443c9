"""Tests of the rollout loop and host wrapper on fake models with NumPy references."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hpt_jax import sampling
from hpt_jax.sampling import Buckets, Categorical, FinishReason, Greedy, Sampler

V = 16
EOS = 3
PAD = 0


@dataclasses.dataclass(frozen=True)
class TableModel:
  """Fake `DecodeModel`: logits = table[last token] + pos[position of last] + slot[cache slot of last].

  The slot term checks that the loop threads the cache (its write index) through prefill and decode.
  """

  def init_cache(self, *, batch, length):
    del batch, length
    return {"index": jnp.zeros((), jnp.int32)}

  def __call__(self, params, tokens, *, positions, attention_mask, cache):
    del attention_mask
    last_slot = cache["index"] + tokens.shape[1] - 1
    logits = params["table"][tokens[:, -1]] + params["pos"][positions[:, -1]] + params["slot"][last_slot]
    return logits.astype(jnp.float32), {"index": cache["index"] + tokens.shape[1]}


@dataclasses.dataclass(frozen=True)
class FixedModel:
  """Fake `DecodeModel` whose logits never change: params["logits"] [V] for every row and step."""

  def init_cache(self, *, batch, length):
    del length
    return jnp.zeros((batch,), jnp.int32)

  def __call__(self, params, tokens, *, positions, attention_mask, cache):
    del positions, attention_mask
    return jnp.broadcast_to(params["logits"], (tokens.shape[0], params["logits"].shape[0])), cache


def _table_params(seed, *, scale=3.0, max_len=64):
  rng = np.random.default_rng(seed)
  return {
      "table": rng.normal(size=(V, V)).astype(np.float32) * scale,
      "pos": rng.normal(size=(max_len, V)).astype(np.float32),
      "slot": rng.normal(size=(max_len, V)).astype(np.float32),
  }


def _log_softmax(x):
  x = x - x.max()
  return x - np.log(np.exp(x).sum())


def _ref_logits(params, prompt, response_prefix, prompt_len):
  """NumPy logits of the fake model after `prompt` (left-padded to prompt_len) + response_prefix."""
  seq = list(prompt) + list(response_prefix)
  pos = len(seq) - 1
  slot = prompt_len - 1 + len(response_prefix)
  return params["table"][seq[-1]] + params["pos"][pos] + params["slot"][slot]


def _ref_greedy(params, prompt, *, max_new, prompt_len):
  out, logps = [], []
  while len(out) < max_new:
    logits = _ref_logits(params, prompt, out, prompt_len)
    tok = int(np.argmax(logits))
    out.append(tok)
    logps.append(_log_softmax(logits)[tok])
    if tok == EOS:
      break
  return out, logps


PROMPTS = [[5, 6, 7], [9], [1, 2, 4, 8, 10], [11, 12], [13, 14, 15, 2]]


def _run(model, params, prompts, *, strategy, max_new, response_len=8, prompt_len=6, num_samples=1,
         seed=0, prompt_ids=None, eos=EOS):
  tokens, mask = sampling.left_pad(prompts, length=prompt_len, pad_id=PAD)
  ids = np.arange(len(prompts)) if prompt_ids is None else np.asarray(prompt_ids)
  out = sampling.jit_sample(
      model, params, tokens, mask, jnp.asarray(ids, jnp.int32), seed=jnp.int32(seed),
      eos_ids=jnp.array([eos], jnp.int32), max_new_tokens=jnp.int32(max_new), strategy=strategy,
      num_samples=num_samples, response_len=response_len, pad_id=PAD)
  return jax.tree.map(np.asarray, out)


def test_greedy_matches_numpy_reference_with_eos_masking_and_early_stop():
  params = _table_params(1)
  # Make EOS the greedy successor of token 9, so at least one row stops early.
  params["table"][9, EOS] = 50.0
  max_new = 7
  out = _run(TableModel(), params, PROMPTS, strategy=Greedy(), max_new=max_new)
  reasons = set()
  for row, prompt in enumerate(PROMPTS):
    ref, ref_lp = _ref_greedy(params, prompt, max_new=max_new, prompt_len=6)
    n = len(ref)
    np.testing.assert_array_equal(out.tokens[row, :n], ref)
    np.testing.assert_array_equal(out.tokens[row, n:], PAD)  # masked after EOS / past max_new
    np.testing.assert_array_equal(out.mask[row], np.arange(8) < n)
    np.testing.assert_allclose(out.logprobs[row, :n], ref_lp, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out.logprobs[row, n:], 0.0)
    np.testing.assert_array_equal(out.sampling_logprobs[row, :n], 0.0)  # point mass
    expected = FinishReason.EOS if ref[-1] == EOS else FinishReason.LENGTH
    assert out.finish_reason[row] == expected
    assert out.lengths[row] == n
    reasons.add(expected)
  assert reasons == {FinishReason.EOS, FinishReason.LENGTH}, "fixture must exercise both reasons"
  assert out.num_steps == max_new  # some row ran to max_new_tokens (< the bucket's 8)


def test_loop_stops_when_every_row_has_emitted_eos():
  params = _table_params(2)
  params["table"][:, EOS] += 40.0  # every token's greedy successor is EOS...
  params["table"][EOS, :] = 0.0
  out = _run(TableModel(), params, PROMPTS, strategy=Greedy(), max_new=8)
  np.testing.assert_array_equal(out.tokens[:, 0], EOS)
  np.testing.assert_array_equal(out.mask, np.broadcast_to(np.arange(8) < 1, out.mask.shape))
  assert out.num_steps == 1  # ...so the while loop never runs a decode step


@pytest.mark.parametrize("strategy", [Categorical(temperature=1.0), Categorical(temperature=0.6, top_k=5)])
def test_sampled_logprobs_equal_teacher_forced_reference(strategy):
  params = _table_params(3, scale=1.0)
  out = _run(TableModel(), params, PROMPTS, strategy=strategy, max_new=8, num_samples=3, seed=7)
  for row in range(out.tokens.shape[0]):
    prompt = PROMPTS[out.prompt_ids[row]]
    n = out.lengths[row]
    resp = out.tokens[row, :n].tolist()
    assert (EOS not in resp[:-1]) and (resp[-1] == EOS) == (out.finish_reason[row] == FinishReason.EOS)
    for t, tok in enumerate(resp):
      scaled = _ref_logits(params, prompt, resp[:t], 6) / strategy.temperature
      np.testing.assert_allclose(out.logprobs[row, t], _log_softmax(scaled)[tok], rtol=1e-5, atol=1e-5)
      if strategy.top_k:
        kept = scaled >= np.sort(scaled)[-strategy.top_k]
        assert kept[tok], "sampled a token that top-k filtered out"
        scaled = np.where(kept, scaled, -np.inf)
      np.testing.assert_allclose(out.sampling_logprobs[row, t], _log_softmax(scaled)[tok], atol=1e-5)


LOGITS = np.array([2.0, 1.2, 1.0, 0.3, -0.5, -1.0, -2.0, -4.0], np.float32)


def _ref_probs(*, temperature, top_k=0, top_p=1.0):
  """Independent NumPy statement of the sampling distribution (temperature, top-k, top-p)."""
  z = LOGITS.astype(np.float64) / temperature
  order = np.argsort(-z, kind="stable")
  keep = np.ones_like(z, bool)
  if top_k:
    keep[order[top_k:]] = False
  p = np.where(keep, np.exp(z - z.max()), 0.0)
  p /= p.sum()
  if top_p < 1.0:
    cum = 0.0
    nucleus = np.zeros_like(keep)
    for i in order:
      if cum >= top_p or not keep[i]:
        break
      nucleus[i] = True
      cum += p[i]
    p = np.where(nucleus, p, 0.0)
    p /= p.sum()
  return p


@pytest.mark.parametrize("kw", [dict(temperature=0.6), dict(temperature=1.0, top_k=3),
                                dict(temperature=1.0, top_p=0.8), dict(temperature=0.7, top_k=5, top_p=0.9)])
def test_strategy_samples_the_right_distribution(kw):
  expected = _ref_probs(**kw)
  out = _run(FixedModel(), {"logits": jnp.asarray(LOGITS)}, [[1]], strategy=Categorical(**kw), max_new=16,
             response_len=16, num_samples=1024, seed=11, eos=-1)  # no EOS: every column is a draw
  assert out.mask.all()
  draws = out.tokens.reshape(-1)
  assert draws.size == 16 * 1024
  freq = np.bincount(draws, minlength=len(LOGITS)) / draws.size
  np.testing.assert_array_equal(freq[expected == 0], 0.0)  # filtered tokens are never drawn
  sigma = np.sqrt(expected * (1 - expected) / draws.size)
  assert np.all(np.abs(freq - expected) <= 5 * sigma + 1e-12), (freq, expected)
  # Steps of one row must be independent draws: consecutive-pair frequencies ~ p_i p_j.
  pairs = np.zeros((len(LOGITS),) * 2)
  np.add.at(pairs, (out.tokens[:, :-1].reshape(-1), out.tokens[:, 1:].reshape(-1)), 1)
  pairs /= pairs.sum()
  assert np.abs(pairs - np.outer(expected, expected)).max() < 0.02
  np.testing.assert_allclose(out.sampling_logprobs, np.log(np.maximum(expected, 1e-30))[out.tokens], rtol=1e-5, atol=1e-5)


def test_filters_match_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4, 32)).astype(np.float32)
  for k in (1, 5, 32):
    got = np.asarray(sampling.top_k_logits(jnp.asarray(logits), top_k=k))
    kth = np.sort(logits, axis=-1)[:, -k][:, None]
    np.testing.assert_array_equal(np.isfinite(got), logits >= kth)
  for p in (0.05, 0.5, 0.95):
    got = np.asarray(sampling.top_p_logits(jnp.asarray(logits), top_p=p))
    for row in range(4):
      probs = np.exp(_log_softmax(logits[row].astype(np.float64)))
      order = np.argsort(-probs)
      n_keep = int(np.searchsorted(np.cumsum(probs[order]), p) + 1)  # smallest prefix with mass >= p
      expect = np.zeros(32, bool)
      expect[order[:n_keep]] = True
      np.testing.assert_array_equal(np.isfinite(got[row]), expect)


def test_rows_do_not_depend_on_batch_composition_and_samples_differ():
  params = _table_params(4, scale=0.5)
  strategy = Categorical(temperature=1.0)
  a = _run(TableModel(), params, [PROMPTS[0], PROMPTS[2], PROMPTS[3]], strategy=strategy, max_new=8,
           num_samples=2, prompt_ids=[10, 12, 13], seed=5)
  b = _run(TableModel(), params, [PROMPTS[3], PROMPTS[0]], strategy=strategy, max_new=8,
           num_samples=2, prompt_ids=[13, 10], seed=5)
  np.testing.assert_array_equal(a.prompt_ids, [10, 10, 12, 12, 13, 13])
  np.testing.assert_array_equal(a.sample_ids, [0, 1, 0, 1, 0, 1])
  np.testing.assert_array_equal(a.tokens[[0, 1, 4, 5]], b.tokens[[2, 3, 0, 1]])
  np.testing.assert_array_equal(a.logprobs[[0, 1, 4, 5]], b.logprobs[[2, 3, 0, 1]])
  assert not np.array_equal(a.tokens[0], a.tokens[1]), "two samples of one prompt should differ"
  c = _run(TableModel(), params, [PROMPTS[3], PROMPTS[0]], strategy=strategy, max_new=8,
           num_samples=2, prompt_ids=[13, 10], seed=6)
  assert not np.array_equal(b.tokens, c.tokens), "another seed should give other samples"


def test_same_bucket_does_not_recompile():
  params = _table_params(5)
  strategy = Categorical(temperature=0.8)
  _run(TableModel(), params, PROMPTS[:3], strategy=strategy, max_new=8)
  before = sampling.jit_sample._cache_size()
  # Other prompts, lengths, seed and max_new_tokens, same (batch, bucket) shapes: no new program.
  _run(TableModel(), params, PROMPTS[2:], strategy=strategy, max_new=5, seed=3)
  assert sampling.jit_sample._cache_size() == before
  _run(TableModel(), params, PROMPTS[2:], strategy=strategy, max_new=5, prompt_len=7)
  assert sampling.jit_sample._cache_size() == before + 1  # a new prompt bucket does compile


class CharCodec:
  """A toy tokenizer: ids 4.. are letters a..l, 3 is EOS (special, skipped when decoding)."""

  def encode(self, text, add_special_tokens=False):
    del add_special_tokens
    return [4 + ord(c) - ord("a") for c in text]

  def decode(self, ids, skip_special_tokens=False):
    return "".join("<eos>" if i == EOS and not skip_special_tokens else
                   ("" if i < 4 else chr(ord("a") + i - 4)) for i in ids)


def test_host_wrapper_texts_buckets_and_batch_padding():
  params = _table_params(6)
  params["table"][6, EOS] = 50.0  # 'c' -> EOS
  sampler = Sampler(TableModel(), eos_ids=[EOS], pad_id=PAD, tokenizer=CharCodec(),
                    buckets=Buckets(prompt=(4, 6), response=(8,)), batch_multiple=4)
  texts = ["abc", "beaded", "ab"]
  got = sampler.generate_texts(params, texts, strategy=Greedy(), max_new_tokens=6, num_samples=2)
  assert got.output.tokens.shape == (6, 8)  # 3 prompts x 2 samples, dummy 4th prompt dropped
  assert got.output.prompt_tokens.shape == (6, 6)  # "beaded" needs the 6 bucket
  codec = CharCodec()
  for row in range(6):
    prompt = codec.encode(texts[row // 2])
    ref, _ = _ref_greedy(params, prompt, max_new=6, prompt_len=6)
    np.testing.assert_array_equal(got.output.tokens[row, :len(ref)], ref)
    assert got.texts[row] == codec.decode(ref, skip_special_tokens=True)
  assert got.output.finish_reason[0] == FinishReason.EOS and got.texts[0] == ""
  with pytest.raises(ValueError, match="Buckets.prompt"):
    sampler.generate_texts(params, ["abcdefg"], strategy=Greedy(), max_new_tokens=4)


def test_strategy_settings_and_bad_input():
  assert sampling.make_strategy(temperature=0.0, top_p=0.5) == Greedy()
  assert sampling.make_strategy(temperature=0.6, top_k=-1, top_p=0.95) == Categorical(
      temperature=0.6, top_k=0, top_p=0.95)
  with pytest.raises(ValueError, match="Categorical.temperature"):
    Categorical(temperature=0.0)
  with pytest.raises(ValueError, match="Categorical.top_p"):
    Categorical(top_p=1.5)
  with pytest.raises(ValueError, match="prompt row 1"):
    sampling.left_pad([[1, 2], []], length=4, pad_id=PAD)
  with pytest.raises(ValueError, match="max_new_tokens"):
    Sampler(TableModel(), eos_ids=[EOS], pad_id=PAD).generate({}, [[1]], strategy=Greedy(),
                                                              max_new_tokens=0)


def test_inverse_cdf_sample_matches_numpy_inversion():
  from hpt_jax.sampling.strategies import inverse_cdf_sample
  rng = np.random.default_rng(5)
  logits = rng.normal(size=(6, 40)) * 2.0
  logits[1, :7] = -np.inf      # leading zero-probability tokens
  logits[2, 30:] = -np.inf     # trailing ones (u near 1 must not reach them)
  logits[3, ::2] = -np.inf     # every other token filtered (top-k style holes)
  logits[4, :] = -np.inf
  logits[4, 17] = 0.0          # a point mass
  uniforms = rng.random(6)
  uniforms[1], uniforms[2] = 0.0, 1.0 - 2.0 ** -24   # the ends of [0, 1)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  cdf = np.cumsum(p, axis=-1)
  target = uniforms * cdf[:, -1]
  expected = (cdf <= target[:, None]).sum(-1)  # C[t-1] <= u C[V-1] < C[t]
  gap = np.abs(cdf - target[:, None]).min(-1) / cdf[:, -1]
  assert (gap[[0, 3, 5]] > 1e-4).all()  # random rows are far from a float32-rounding boundary
  got = np.asarray(jax.jit(inverse_cdf_sample)(jnp.asarray(logits, jnp.float32),
                                               jnp.asarray(uniforms, jnp.float32)))
  np.testing.assert_array_equal(got, expected)
  assert got[1] == 7 and got[2] == 29 and got[4] == 17
  assert np.isfinite(logits[np.arange(6), got]).all()


def test_phase_ends_split_the_response_into_aligned_phases():
  # Hand-computed: T = 64 in 4 phases of 16; T = 40 in 2 phases (ceil(20 / 8) * 8 = 24); a T below
  # 2 * MIN_PHASE_STEPS, or one phase asked for, is a single phase on the full cache.
  assert sampling.phase_ends(64, 4) == (16, 32, 48, 64)
  assert sampling.phase_ends(64, 8) == (16, 32, 48, 64)  # at least 16 columns per phase
  assert sampling.phase_ends(40, 4) == (24, 40)
  assert sampling.phase_ends(100, 3) == (40, 72, 100)
  assert sampling.phase_ends(31, 4) == (31,)
  assert sampling.phase_ends(64, 1) == (64,)
  with pytest.raises(ValueError, match="decode_phases"):
    sampling.phase_ends(64, 0)


_GROWN_LENGTHS = []  # cache lengths the phased fake model was traced with


@dataclasses.dataclass(frozen=True)
class GrowingModel(TableModel):
  """`TableModel` whose cache holds a [B, S] token buffer it writes, plus `grow_cache` (phases).

  The logits add a term from the sum over the whole buffer, so a write past a too-short cache
  (`dynamic_update_slice` clamps it onto earlier slots) would change the samples.
  """

  decode_phases: int = 4

  def init_cache(self, *, batch, length):
    _GROWN_LENGTHS.append(length)
    return {"index": jnp.zeros((), jnp.int32), "buf": jnp.zeros((batch, length), jnp.int32)}

  def grow_cache(self, cache, length):
    _GROWN_LENGTHS.append(length)
    extra = length - cache["buf"].shape[1]
    return {**cache, "buf": jnp.pad(cache["buf"], ((0, 0), (0, extra)))}

  def __call__(self, params, tokens, *, positions, attention_mask, cache):
    logits, new = super().__call__(params, tokens, positions=positions, attention_mask=attention_mask,
                                   cache=cache)
    buf = jax.lax.dynamic_update_slice(cache["buf"], tokens, (0, cache["index"]))
    total = jnp.sum(buf, axis=1) % params["pos"].shape[0]
    return logits + params["slot"][total], {**new, "buf": buf}


def test_phased_decode_equals_one_phase_and_grows_the_cache():
  params = _table_params(8, scale=0.5, max_len=128)
  strategy = Categorical(temperature=1.0)
  kw = dict(strategy=strategy, max_new=40, response_len=40, num_samples=2, seed=3, eos=-1)  # no EOS
  one = _run(GrowingModel(decode_phases=1), params, PROMPTS, **kw)
  _GROWN_LENGTHS.clear()
  phased = _run(GrowingModel(decode_phases=4), params, PROMPTS, **kw)
  assert _GROWN_LENGTHS == [6 + 24, 6 + 40]  # prompt bucket 6 + phase_ends(40, 4)
  np.testing.assert_array_equal(phased.tokens, one.tokens)
  np.testing.assert_array_equal(phased.logprobs, one.logprobs)
  assert phased.num_steps == 40 and phased.mask.all()
  # The check can fail: caches 2 slots shorter than asked (1 is spare) clamp the last write of each
  # phase onto an earlier slot, and the samples change.
  short = _run(ShortGrowingModel(decode_phases=4), params, PROMPTS, **kw)
  assert not np.array_equal(short.tokens, one.tokens)


@dataclasses.dataclass(frozen=True)
class ShortGrowingModel(GrowingModel):
  """`GrowingModel` whose caches are 2 slots shorter than asked (a broken cache, for the test)."""

  def init_cache(self, *, batch, length):
    return super().init_cache(batch=batch, length=length - 2)

  def grow_cache(self, cache, length):
    return super().grow_cache(cache, length - 2)


def test_prefill_tokens_rounds_the_real_count_up_to_a_granule():
  count = lambda mask, g: sampling.sampler.prefill_tokens(mask, granules=g)
  mask = np.zeros((4, 8), bool)  # 32 slots: granules of 2 (16) or 4 (8)
  mask[:, 5:] = True             # 12 real tokens
  assert count(mask, 16) == 12 and count(mask, 8) == 12
  mask[0, 4] = True              # 13 -> 14 or 16
  assert count(mask, 16) == 14 and count(mask, 8) == 16
  assert count(np.ones((4, 8), bool), 16) == 32
  assert count(np.ones((3, 7), bool), 16) == 21  # granule 2, capped at the 21 slots
  with pytest.raises(ValueError, match="prefill_granules"):
    count(mask, 0)
