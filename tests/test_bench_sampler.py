"""The sampler benchmark's FLOP count (its floor analysis) against torch's FLOP counter on HF generate."""

import pathlib
import sys

import numpy as np
import torch
import transformers
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "experiments"))
import bench_sampler  # noqa: E402  (a script directory, not a package)

from hpt_jax.models import ModelConfig  # noqa: E402


def _matmul_flops(fn) -> int:
  """FLOPs of the matmuls torch runs in `fn`: nn.Linear's mm / addmm, and bmm (generate's LM head on
  the sliced last prefill position); SDPA attention is not among them."""
  counter = FlopCounterMode(display=False)
  with counter:
    fn()
  counts = counter.get_flop_counts()["Global"]
  return sum(n for op, n in counts.items() if str(op).split(".")[1] in ("mm", "addmm", "bmm"))


def test_sampler_flops_match_transformers_generate_linear_flops():
  cfg = transformers.Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                                 pad_token_id=0)
  torch.manual_seed(0)
  hf = transformers.Qwen2ForCausalLM(cfg).eval()
  config = ModelConfig.from_hf_config(cfg.to_dict())
  b, p, t = 3, 5, 4
  ids = torch.tensor(np.random.default_rng(0).integers(1, 64, size=(b, p)))

  def generate():
    with torch.inference_mode():
      hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=t, min_new_tokens=t,
                  do_sample=False, pad_token_id=0, eos_token_id=None)

  theirs = _matmul_flops(generate)
  ours = bench_sampler.sampler_flops(config, batch=b, prompt_len=p, new_tokens=t, real_prompt_tokens=b * p,
                                     decode_phases=1)
  # transformers runs the last layer's o-proj and MLP on all P prompt slots; ours on the last one only.
  d, f, nh = config.hidden_size, config.intermediate_size, config.num_heads * config.head_dim
  last_layer_rest = 2 * nh * d + 6 * d * f
  assert ours.prefill + ours.decode + ours.lm_head == theirs - b * (p - 1) * last_layer_rest
  assert ours.without_padding == ours.total  # no padding here
  assert ours.attention > 0
  # Packed prefill rows: the same count at R = B * P, and (L-1) whole layers + the last layer's
  # q/k/v less per row dropped.
  kw = dict(batch=b, prompt_len=p, new_tokens=t, real_prompt_tokens=b * p, decode_phases=1)
  assert bench_sampler.sampler_flops(config, prefill_rows=b * p, **kw) == ours
  packed = bench_sampler.sampler_flops(config, prefill_rows=b * p - 4, **kw)
  per_row = config.num_layers * bench_sampler.linear_flops_per_token(config) - last_layer_rest
  assert ours.prefill - packed.prefill == 4 * per_row


def _jaxpr_matmul_flops(jaxpr) -> int:
  """2 x multiply-adds of every dot_general in a jaxpr, a scan's body counted `length` times."""
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (contract, _), _ = eqn.params["dimension_numbers"]
      k = int(np.prod([eqn.invars[0].aval.shape[i] for i in contract]))
      total += 2 * k * int(np.prod(eqn.outvars[0].aval.shape))
    for name, sub in eqn.params.items():
      inner = getattr(sub, "jaxpr", None)
      if inner is not None:
        total += _jaxpr_matmul_flops(inner) * (eqn.params["length"] if eqn.primitive.name == "scan" else 1)
  return total


def test_dense_chain_runs_the_dense_matmuls_the_flop_count_says():
  """The matmul-only ceiling program performs exactly the prefill + decode + LM-head FLOPs of a run."""
  cfg = bench_sampler.hf_config(smoke=True)
  config = ModelConfig.from_hf_config(cfg.to_dict())
  b, p, t, rows = 4, 6, 5, 18
  fn, args = bench_sampler.dense_chain(config, batch=b, new_tokens=t, prefill_rows=rows)
  import jax  # noqa: PLC0415  (the module's other tests need no jax)
  counted = _jaxpr_matmul_flops(jax.make_jaxpr(fn)(*args).jaxpr)
  flops = bench_sampler.sampler_flops(config, batch=b, prompt_len=p, new_tokens=t, real_prompt_tokens=rows,
                                      decode_phases=1, prefill_rows=rows)
  assert counted == flops.prefill + flops.decode + flops.lm_head
  out = fn(*args)
  assert out.shape == (b, config.vocab_size) and bool(np.isfinite(np.asarray(out)).all())
