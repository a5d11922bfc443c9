"""Parity of the Flax CausalLM with `transformers` PyTorch (the reference) and the export round trip.

Tiny random Qwen2 (q/k/v biases, tied embeddings) and Llama (llama3 RoPE scaling, untied) models are
built with transformers, their biases and norm scales randomised (HF initialises them to 0 / 1, which
would hide a mis-mapped bias or norm), saved with save_pretrained, loaded by `hf_io.load_pretrained`.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from hpt_jax.models import hf_io
from hpt_jax.models.testing import padded_batch, valid_max_abs_diff

VOCAB = 96

_HF_CONFIGS = {
    "qwen2": lambda: transformers.Qwen2Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=True),
    # original_max_position_embeddings=64 puts the wavelengths of head_dim 16 / theta 10000 into all
    # three llama3 bands (kept, interpolated, divided by factor) at the positions used below.
    "llama": lambda: transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        rms_norm_eps=1e-5, tie_word_embeddings=False,
        rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 4.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 64}),
}


@pytest.fixture(scope="module", params=sorted(_HF_CONFIGS))
def hf_model(request, tmp_path_factory):
  """(torch model in eval mode, its save_pretrained directory)."""
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(
      _HF_CONFIGS[request.param](), attn_implementation="eager").eval()
  with torch.no_grad():
    for name, param in model.named_parameters():
      if name.endswith("bias") or "norm" in name:
        param.add_(0.2 * torch.randn_like(param))
  path = tmp_path_factory.mktemp(f"hf_{request.param}")
  model.save_pretrained(path)
  return model, path


def _batch():
  # Row 0 left-padded, row 1 right-padded, row 2 both, row 3 unpadded: T = 40 reaches positions
  # whose llama3 low-frequency rotations differ measurably from unscaled RoPE.
  return padded_batch(np.random.default_rng(0), vocab_size=VOCAB, length=40,
                      left_pad=[5, 0, 3, 0], right_pad=[0, 7, 2, 0])


def _hf_forward(model, tokens, positions, mask):
  with torch.no_grad():
    out = model(input_ids=torch.tensor(tokens, dtype=torch.long),
                attention_mask=torch.tensor(mask, dtype=torch.long),
                position_ids=torch.tensor(positions, dtype=torch.long),
                output_hidden_states=True)
  return out.logits.numpy(), [h.numpy() for h in out.hidden_states]


@jax.jit
def _ours(graphdef_state, tokens, positions, mask):
  graphdef, state = graphdef_state
  model = nnx.merge(graphdef, state)
  hidden, _ = model(tokens, positions=positions, attention_mask=mask)
  stream = model.hidden_states(tokens, positions=positions, attention_mask=mask)
  return model.logits(hidden), hidden, stream


def _run_ours(model, tokens, positions, mask):
  return _ours(nnx.split(model), jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(mask))


def test_logits_and_hidden_states_match_transformers(hf_model):
  torch_model, path = hf_model
  ours = hf_io.load_pretrained(path)
  tokens, positions, mask = _batch()
  ref_logits, ref_hidden = _hf_forward(torch_model, tokens, positions, mask)
  logits, final_hidden, stream = _run_ours(ours, tokens, positions, mask)

  assert logits.dtype == jnp.float32 and logits.shape == ref_logits.shape
  assert valid_max_abs_diff(logits, ref_logits, mask) <= 1e-4
  # transformers returns the embeddings, the outputs of layers 0..L-2, then the final *normed* state.
  num_layers = torch_model.config.num_hidden_layers
  assert len(ref_hidden) == num_layers + 1 and stream.shape[0] == num_layers + 1
  for layer in range(num_layers):
    assert valid_max_abs_diff(stream[layer], ref_hidden[layer], mask) <= 1e-4, layer
  assert valid_max_abs_diff(final_hidden, ref_hidden[num_layers], mask) <= 1e-4
  # The comparison is sensitive: logits of a different row order differ by far more than 1e-4.
  assert valid_max_abs_diff(logits[::-1], ref_logits, mask[::-1] & mask) > 1e-2


def test_export_round_trip(hf_model, tmp_path):
  torch_model, path = hf_model
  ours = hf_io.load_pretrained(path)
  tokenizer_dir = tmp_path / "tok"
  _save_tiny_tokenizer(tokenizer_dir)
  out = tmp_path / "export"
  # A small shard limit forces the multi-file layout with an index.
  hf_io.save_pretrained(ours, out, tokenizer_dir=tokenizer_dir, max_shard_bytes=40_000)
  index = json.loads((out / hf_io.INDEX_FILE).read_text())
  assert len(set(index["weight_map"].values())) > 1
  assert set(index["weight_map"]) == set(torch_model.state_dict()) - _tied_keys(torch_model)

  reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  tokens, positions, mask = _batch()
  ref_logits, _ = _hf_forward(torch_model, tokens, positions, mask)
  round_trip_logits, _ = _hf_forward(reloaded, tokens, positions, mask)
  assert valid_max_abs_diff(round_trip_logits, ref_logits, mask) <= 1e-6

  # Our loader reads the sharded export back to identical parameters.
  again = hf_io.load_pretrained(out)
  for (p, a), (_, b) in zip(nnx.to_flat_state(nnx.state(ours)), nnx.to_flat_state(nnx.state(again))):
    np.testing.assert_array_equal(np.asarray(a.get_value()), np.asarray(b.get_value()), err_msg=str(p))

  text = "1 + 2 = 3"
  original = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
  copied = transformers.AutoTokenizer.from_pretrained(out)
  assert copied(text)["input_ids"] == original(text)["input_ids"]


def _tied_keys(model):
  return {"lm_head.weight"} if model.config.tie_word_embeddings else set()


def _save_tiny_tokenizer(directory):
  """A word-level tokenizer trained locally (no downloads), saved as HF tokenizer files."""
  from tokenizers import Tokenizer, models, pre_tokenizers, trainers
  tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.train_from_iterator(["1 + 2 = 3", "4 + 5 = 9"],
                          trainers.WordLevelTrainer(special_tokens=["<unk>", "<eos>"]))
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>",
                                              eos_token="<eos>")
  os.makedirs(directory, exist_ok=True)
  fast.save_pretrained(directory)


def test_llama_attention_bias_matches_transformers(tmp_path):
  """Llama's `attention_bias=True` adds biases to q/k/v *and* o_proj (Qwen2 has none on o_proj)."""
  torch.manual_seed(1)
  config = transformers.LlamaConfig(
      vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
      attention_bias=True, tie_word_embeddings=False)
  torch_model = transformers.AutoModelForCausalLM.from_config(
      config, attn_implementation="eager").eval()
  with torch.no_grad():
    for name, param in torch_model.named_parameters():
      if name.endswith("bias"):
        param.add_(0.2 * torch.randn_like(param))
  torch_model.save_pretrained(tmp_path)
  ours = hf_io.load_pretrained(tmp_path)
  assert ours.config.qkv_bias and ours.config.o_bias
  tokens, positions, mask = padded_batch(np.random.default_rng(1), vocab_size=VOCAB, length=6,
                                         left_pad=[2, 0], right_pad=[0, 1])
  ref_logits, _ = _hf_forward(torch_model, tokens, positions, mask)
  logits, _, _ = _run_ours(ours, tokens, positions, mask)
  assert valid_max_abs_diff(logits, ref_logits, mask) <= 1e-4
