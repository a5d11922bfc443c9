"""Rollout throughput: our jitted sampler vs `transformers.generate` (torch, CPU), same weights.

Model: the project's tiny Qwen2 (vocab 512, hidden 256, 4 layers, 8 heads, 2 KV heads), random weights
built with `transformers`, saved and loaded into our `CausalLM` by `models.hf_io`. Workload: 128 sequences x 64 new tokens,
temperature 1.0 (HPT's rollout setting), no EOS, so both sides produce exactly 128 x 64 tokens.
Compile time is reported separately and excluded from our tokens/s (one program serves a whole run).

  python experiments/bench_sampler.py            # the issue's benchmark
  python experiments/bench_sampler.py --smoke    # a seconds-long version for CI
"""

import argparse
import os
import statistics
import tempfile
import time

import jax
import numpy as np
import torch
import transformers
from flax import nnx

from hpt_jax.models.hf_io import load_pretrained
from hpt_jax.sampling import Buckets, Categorical, Sampler
from hpt_jax.sampling.lm import CausalLMDecoder

PAD = 0
NO_EOS = -1  # an id no model can emit: every row runs to max_new_tokens


def hf_config(*, smoke: bool) -> transformers.Qwen2Config:
  sizes = (dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2) if smoke else
           dict(vocab_size=512, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                num_attention_heads=8, num_key_value_heads=2))
  return transformers.Qwen2Config(max_position_embeddings=2048, tie_word_embeddings=True,
                                  rms_norm_eps=1e-6, rope_theta=10000.0, pad_token_id=PAD, **sizes)


def load_same_weights(hf: torch.nn.Module) -> tuple[CausalLMDecoder, nnx.State]:
  """Our CausalLM with the HF model's weights: save_pretrained, then the model's own loader."""
  with tempfile.TemporaryDirectory() as path:
    hf.save_pretrained(path)
    return CausalLMDecoder.from_model(load_pretrained(path))


def time_ours(sampler: Sampler, params, prompts, *, new_tokens: int, repeats: int):
  strategy = Categorical(temperature=1.0)
  start = time.perf_counter()
  out = sampler.generate(params, prompts, strategy=strategy, max_new_tokens=new_tokens, seed=0)
  first = time.perf_counter() - start
  assert int(out.output.mask.sum()) == len(prompts) * new_tokens
  times, cpu = [], []
  for seed in range(1, repeats + 1):
    start, start_cpu = time.perf_counter(), time.process_time()
    sampler.generate(params, prompts, strategy=strategy, max_new_tokens=new_tokens, seed=seed)
    times.append(time.perf_counter() - start)
    cpu.append(time.process_time() - start_cpu)
  return first, statistics.median(times), statistics.median(cpu)


def time_hf(hf, prompts, *, new_tokens: int, prompt_len: int, repeats: int) -> float:
  ids = np.full((len(prompts), prompt_len), PAD, np.int64)
  mask = np.zeros_like(ids)
  for row, p in enumerate(prompts):
    ids[row, prompt_len - len(p):] = p
    mask[row, prompt_len - len(p):] = 1
  kwargs = dict(attention_mask=torch.tensor(mask), max_new_tokens=new_tokens,
                min_new_tokens=new_tokens, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                pad_token_id=PAD, eos_token_id=None)
  times, cpu = [], []
  with torch.inference_mode():
    # Warm-up (lazy torch / generate setup), excluded as our compile is.
    hf.generate(torch.tensor(ids[:2]), **{**kwargs, "attention_mask": kwargs["attention_mask"][:2],
                                           "max_new_tokens": 2, "min_new_tokens": 2})
    for _ in range(repeats):
      start, start_cpu = time.perf_counter(), time.process_time()
      out = hf.generate(torch.tensor(ids), **kwargs)
      times.append(time.perf_counter() - start)
      cpu.append(time.process_time() - start_cpu)
  assert out.shape == (len(prompts), prompt_len + new_tokens), out.shape
  return statistics.median(times), statistics.median(cpu)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--smoke", action="store_true", help="tiny model and batch, runs in seconds")
  parser.add_argument("--sequences", type=int, default=128)
  parser.add_argument("--new_tokens", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  sequences, new_tokens, repeats = ((8, 8, 1) if args.smoke else
                                    (args.sequences, args.new_tokens, args.repeats))

  torch.manual_seed(0)
  hf = transformers.Qwen2ForCausalLM(hf_config(smoke=args.smoke)).eval()
  decoder, params = load_same_weights(hf)
  rng = np.random.default_rng(0)
  vocab = hf.config.vocab_size
  prompt_bucket = 32
  prompts = [rng.integers(1, vocab, size=rng.integers(8, prompt_bucket + 1)).tolist()
             for _ in range(sequences)]
  sampler = Sampler(decoder, eos_ids=[NO_EOS], pad_id=PAD,
                    buckets=Buckets(prompt=(prompt_bucket,), response=(new_tokens,)))

  first, ours, ours_cpu = time_ours(sampler, params, prompts, new_tokens=new_tokens,
                                   repeats=repeats)
  # torch's OpenMP pool degrades badly when the cores are shared, so transformers is timed with one
  # thread and with torch's default, and compared at its faster setting.
  default_threads = torch.get_num_threads()
  hf_runs = {}
  for threads in sorted({1, default_threads}):
    torch.set_num_threads(threads)
    hf_runs[threads] = time_hf(hf, prompts, new_tokens=new_tokens, prompt_len=prompt_bucket,
                               repeats=repeats)
  torch.set_num_threads(default_threads)
  best_threads = min(hf_runs, key=lambda t: hf_runs[t][0])
  theirs, theirs_cpu = hf_runs[best_threads]
  total = sequences * new_tokens
  # CPU seconds (all threads of this process) are printed too: on a shared machine wall time
  # depends on the other load, CPU time much less.
  print(f"device: {jax.devices()[0].platform} x{jax.device_count()}, {os.cpu_count()} CPUs, load "
        f"average {os.getloadavg()[0]:.1f}; {sequences} sequences x {new_tokens} new tokens, prompts "
        f"left-padded to {prompt_bucket}, median of {repeats}")
  print(f"hpt_jax sampler:        {total / ours:10.1f} tokens/s  ({ours:.3f} s wall, {ours_cpu:.3f} s "
        f"CPU; first call incl. compile {first:.2f} s)")
  for threads, (wall, cpu) in hf_runs.items():
    print(f"transformers.generate:  {total / wall:10.1f} tokens/s  ({wall:.3f} s wall, {cpu:.3f} s "
          f"CPU; torch threads {threads})")
  print(f"ratio (ours / transformers): {theirs / ours:.2f}x wall, {theirs_cpu / ours_cpu:.2f}x CPU")


if __name__ == "__main__":
  main()
