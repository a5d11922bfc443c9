"""The sampler on the real Flax `CausalLM`, against `transformers` (torch) tiny random Qwen2 / Llama."""

import dataclasses

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from hpt_jax import sampling
from hpt_jax.models import sharding
from hpt_jax.models.hf_io import load_pretrained
from hpt_jax.sampling import Buckets, Categorical, FinishReason, Greedy, Sampler
from hpt_jax.sampling.lm import CausalLMDecoder

PAD = 0
VOCAB = 96
MAX_NEW = 10
BUCKETS = Buckets(prompt=(12,), response=(16,))
PROMPTS = [[5, 17, 33], [8, 9, 10, 11, 12, 13, 14, 15, 16], [40], [70, 71, 3, 60, 55, 91]]


def _hf_model(family: str, tmp_path):
  """A tiny random HF model saved with save_pretrained; returns (torch model, checkpoint dir)."""
  torch.manual_seed(0)
  common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                # A wide init makes logits far from uniform, so argmax has no float near-ties.
                initializer_range=0.2, bos_token_id=1, eos_token_id=2, pad_token_id=PAD)
  if family == "qwen2":
    cfg, cls = transformers.Qwen2Config(tie_word_embeddings=True, **common), transformers.Qwen2ForCausalLM
  else:
    cfg, cls = (transformers.LlamaConfig(tie_word_embeddings=False, rope_theta=500000.0, **common),
                transformers.LlamaForCausalLM)
  cls(cfg).save_pretrained(tmp_path / family)
  return cls.from_pretrained(tmp_path / family, dtype=torch.float32).eval(), tmp_path / family


def _ours(path, **kw) -> tuple[CausalLMDecoder, nnx.State]:
  """Our CausalLM from the HF checkpoint directory, through the model's own loader."""
  return CausalLMDecoder.from_model(load_pretrained(path, **kw))


def _hf_greedy(hf, prompts, *, eos):
  tokens, mask = sampling.left_pad(prompts, length=12, pad_id=PAD)
  with torch.no_grad():
    out = hf.generate(torch.tensor(tokens, dtype=torch.long), attention_mask=torch.tensor(mask).long(),
                      max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=eos, pad_token_id=PAD)
  new = out[:, 12:].numpy()
  return np.pad(new, ((0, 0), (0, MAX_NEW - new.shape[1])), constant_values=PAD)


def _hf_teacher_forced_logprobs(hf, out, *, temperature):
  """log softmax(logits / temperature) of each response token, from one uncached torch forward."""
  tokens = np.concatenate([out.prompt_tokens, out.tokens], axis=1)
  mask = np.concatenate([out.prompt_mask, out.mask.astype(bool)], axis=1)
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  with torch.no_grad():
    logits = hf(input_ids=torch.tensor(tokens, dtype=torch.long), attention_mask=torch.tensor(mask).long(),
                position_ids=torch.tensor(positions)).logits.double().numpy()
  p = out.prompt_tokens.shape[1]
  logp = torch.log_softmax(torch.tensor(logits[:, p - 1:-1] / temperature), dim=-1).numpy()
  return np.take_along_axis(logp, out.tokens[..., None], axis=-1)[..., 0]


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_greedy_matches_transformers_generate(family, tmp_path):
  hf, path = _hf_model(family, tmp_path)
  decoder, params = _ours(path)
  # Pick an EOS id that row 0 emits at its 4th step, so EOS stopping is compared too.
  free_run = _hf_greedy(hf, PROMPTS, eos=None)
  eos = int(next(t for t in free_run[0, 3:] if t not in free_run[0, :3]))
  expected = _hf_greedy(hf, PROMPTS, eos=eos)
  sampler = Sampler(decoder, eos_ids=[eos], pad_id=PAD, buckets=BUCKETS)
  got = sampler.generate(params, PROMPTS, strategy=Greedy(), max_new_tokens=MAX_NEW).output
  np.testing.assert_array_equal(got.tokens[:, :MAX_NEW], expected)
  np.testing.assert_array_equal(got.tokens[:, MAX_NEW:], PAD)
  assert got.finish_reason[0] == FinishReason.EOS and got.lengths[0] <= 4
  np.testing.assert_array_equal(got.mask[:, :MAX_NEW], expected != PAD)  # PAD is never generated here
  if family == "qwen2":
    # Bucketing: other prompts of the same buckets reuse the compiled program.
    before = sampling.jit_sample._cache_size()
    other = [[3, 4], [50] * 11, [7, 8, 9], [20, 21]]
    again = sampler.generate(params, other, strategy=Greedy(), max_new_tokens=MAX_NEW - 3, seed=1)
    assert sampling.jit_sample._cache_size() == before
    np.testing.assert_array_equal(again.output.tokens[:, :MAX_NEW - 3],
                                  _hf_greedy(hf, other, eos=eos)[:, :MAX_NEW - 3])


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_sampled_logprobs_equal_teacher_forced_forward(temperature, tmp_path):
  hf, path = _hf_model("qwen2", tmp_path)
  decoder, params = _ours(path)
  sampler = Sampler(decoder, eos_ids=[2], pad_id=PAD, buckets=BUCKETS)
  out = sampler.generate(params, PROMPTS, strategy=Categorical(temperature=temperature),
                         max_new_tokens=MAX_NEW, num_samples=2, seed=3).output
  ref = _hf_teacher_forced_logprobs(hf, out, temperature=temperature)
  m = out.mask.astype(bool)
  assert m.sum() >= 4 * MAX_NEW
  np.testing.assert_allclose(out.logprobs[m], ref[m], atol=1e-4, rtol=0)
  np.testing.assert_allclose(out.sampling_logprobs[m], ref[m], atol=1e-4, rtol=0)  # no top-k/p
  assert not np.array_equal(out.tokens[0], out.tokens[1]), "samples of one prompt should differ"


def test_sharded_sampling_equals_single_device(tmp_path):
  hf, path = _hf_model("qwen2", tmp_path)
  decoder, params = _ours(path)
  # The settings of the temperature-1.0 log-prob test, so the single-device program is reused.
  strategy = Categorical(temperature=1.0)
  plain = Sampler(decoder, eos_ids=[2], pad_id=PAD, buckets=BUCKETS)
  ref = plain.generate(params, PROMPTS, strategy=strategy, max_new_tokens=MAX_NEW, num_samples=2,
                       seed=3).output

  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  _, sharded_params = _ours(path, mesh=mesh)
  assert sharded_params["layers"]["self_attn"]["q_proj"]["kernel"].sharding.spec == PartitionSpec(
      None, "fsdp", "tensor", None)  # the trainer's layout, used in place
  batch = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
  sharded = Sampler(decoder, eos_ids=[2], pad_id=PAD, buckets=BUCKETS, batch_sharding=batch,
                    batch_multiple=4)
  with jax.set_mesh(mesh):
    got = sharded.generate(sharded_params, PROMPTS, strategy=strategy, max_new_tokens=MAX_NEW,
                           num_samples=2, seed=3).output
  np.testing.assert_array_equal(got.tokens, ref.tokens)
  np.testing.assert_allclose(got.logprobs, ref.logprobs, atol=1e-5)


def test_phased_decode_and_packed_prefill_equal_the_plain_loop(tmp_path):
  # T = 32: two decode phases (caches of 12 + 16 and 12 + 32 slots), then also the prefill on the
  # packed real prompt tokens (19 of 48 slots -> 32 rows at 3 granules), against one loop on the full
  # cache with the padded prefill.
  _, path = _hf_model("qwen2", tmp_path)
  decoder, params = _ours(path)
  buckets = Buckets(prompt=(12,), response=(32,))
  outs = []
  for phases, granules in ((1, 0), (2, 0), (2, 3)):
    sampler = Sampler(dataclasses.replace(decoder, decode_phases=phases), eos_ids=[-1], pad_id=PAD,
                      buckets=buckets, prefill_granules=granules)
    outs.append(sampler.generate(params, PROMPTS, strategy=Categorical(), max_new_tokens=32,
                                 seed=1).output)
  assert sampling.phase_ends(32, 2) == (16, 32)
  assert sampling.sampler.prefill_tokens(sampling.left_pad(PROMPTS, length=12, pad_id=PAD)[1],
                                         granules=3) == 32
  for out in outs[1:]:
    np.testing.assert_array_equal(out.tokens, outs[0].tokens)
    # Softmax sums over 28 instead of 44 slots (the extra ones exactly 0), and packed rows, round
    # differently.
    np.testing.assert_allclose(out.logprobs, outs[0].logprobs, atol=1e-5)
  assert outs[0].mask.all()
