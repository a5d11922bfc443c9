"""Rollout throughput: our jitted sampler vs `transformers.generate` (torch, CPU), same weights.

Model: the project's tiny Qwen2 (vocab 512, hidden 256, 4 layers, 8 heads, 2 KV heads), random weights
built with `transformers`, saved and loaded into our `CausalLM` by `models.hf_io`. Workload: 128 sequences x 64 new tokens,
temperature 1.0 (HPT's rollout setting), no EOS, so both sides produce exactly 128 x 64 tokens.
Compile time is reported separately and excluded from our tokens/s (one program serves a whole run).
The sides take turns (ours, transformers at 1 thread, at torch's default threads, ours, ...), so a
change of the machine's load hits both; CPU seconds (all threads of the process) are printed beside
wall time, since on shared cores wall time depends on the other load much more.

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
from torch_peer import DEVICE as TORCH_DEVICE, synchronize

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


def ours_runner(sampler: Sampler, params, prompts, *, new_tokens: int):
  """Compiles (first call, timed) and returns a one-run closure; each run uses a fresh seed."""
  strategy = Categorical(temperature=1.0)
  start = time.perf_counter()
  out = sampler.generate(params, prompts, strategy=strategy, max_new_tokens=new_tokens, seed=0)
  compile_s = time.perf_counter() - start
  assert int(out.output.mask.sum()) == len(prompts) * new_tokens
  seeds = iter(range(1, 1 << 30))
  run = lambda: sampler.generate(params, prompts, strategy=strategy, max_new_tokens=new_tokens,
                                 seed=next(seeds))
  return run, compile_s


def hf_runner(hf, prompts, *, new_tokens: int, prompt_len: int, threads: int):
  """A one-run closure of `transformers.generate` on the same left-padded batch with `threads`."""
  ids = np.full((len(prompts), prompt_len), PAD, np.int64)
  mask = np.zeros_like(ids)
  for row, p in enumerate(prompts):
    ids[row, prompt_len - len(p):] = p
    mask[row, prompt_len - len(p):] = 1
  kwargs = dict(attention_mask=torch.tensor(mask, device=TORCH_DEVICE), max_new_tokens=new_tokens,
                min_new_tokens=new_tokens, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                pad_token_id=PAD, eos_token_id=None)

  def run():
    torch.set_num_threads(threads)
    with torch.inference_mode():
      out = hf.generate(torch.tensor(ids, device=TORCH_DEVICE), **kwargs)
      synchronize()
    assert out.shape == (len(prompts), prompt_len + new_tokens), out.shape

  # Warm-up (lazy torch / generate setup), excluded as our compile is.
  torch.set_num_threads(threads)
  with torch.inference_mode():
    hf.generate(torch.tensor(ids[:2], device=TORCH_DEVICE), **{**kwargs, "attention_mask": kwargs["attention_mask"][:2],
                                           "max_new_tokens": 2, "min_new_tokens": 2})
  return run


def time_interleaved(runners: dict, *, repeats: int) -> dict:
  """Median (wall s, CPU s) of each runner, the runners taking turns so that they share the load."""
  times = {name: [] for name in runners}
  for _ in range(repeats):
    for name, run in runners.items():
      start, start_cpu = time.perf_counter(), time.process_time()
      run()
      times[name].append((time.perf_counter() - start, time.process_time() - start_cpu))
  return {name: (statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts))
          for name, ts in times.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--smoke", action="store_true", help="tiny model and batch, runs in seconds")
  parser.add_argument("--sequences", type=int, default=128)
  parser.add_argument("--new_tokens", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--torch_threads", type=int, default=0,
                      help="time transformers with this many torch threads only (0: 1 and torch's default)")
  args = parser.parse_args()
  sequences, new_tokens, repeats = ((8, 8, 1) if args.smoke else
                                    (args.sequences, args.new_tokens, args.repeats))

  torch.manual_seed(0)
  hf = transformers.Qwen2ForCausalLM(hf_config(smoke=args.smoke)).eval()
  decoder, params = load_same_weights(hf)
  hf = hf.to(TORCH_DEVICE)  # the peer on the same kind of chip (BENCH_TORCH_DEVICE)
  rng = np.random.default_rng(0)
  vocab = hf.config.vocab_size
  prompt_bucket = 32
  prompts = [rng.integers(1, vocab, size=rng.integers(8, prompt_bucket + 1)).tolist()
             for _ in range(sequences)]
  sampler = Sampler(decoder, eos_ids=[NO_EOS], pad_id=PAD,
                    buckets=Buckets(prompt=(prompt_bucket,), response=(new_tokens,)))

  run_ours, first = ours_runner(sampler, params, prompts, new_tokens=new_tokens)
  # torch's OpenMP pool degrades badly when the cores are shared, so transformers is timed with one
  # thread and with torch's default, and compared at its faster setting.
  default_threads = torch.get_num_threads()
  thread_counts = sorted({1, default_threads} if args.torch_threads == 0 else {args.torch_threads})
  runners = {"ours": run_ours}
  for threads in thread_counts:
    runners[threads] = hf_runner(hf, prompts, new_tokens=new_tokens, prompt_len=prompt_bucket,
                                 threads=threads)
  load_before = os.getloadavg()[0]
  medians = time_interleaved(runners, repeats=repeats)
  torch.set_num_threads(default_threads)
  ours, ours_cpu = medians.pop("ours")
  hf_runs = medians
  best_threads = min(hf_runs, key=lambda t: hf_runs[t][0])
  theirs, theirs_cpu = hf_runs[best_threads]
  total = sequences * new_tokens
  # CPU seconds (all threads of this process) are printed too: on a shared machine wall time
  # depends on the other load, CPU time much less.
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, torch on {TORCH_DEVICE}, {os.cpu_count()} CPUs, load "
        f"average {load_before:.1f} -> {os.getloadavg()[0]:.1f}; {sequences} sequences x {new_tokens} "
        f"new tokens, prompts left-padded to {prompt_bucket}, median of {repeats} interleaved runs")
  print(f"hpt_jax sampler:        {total / ours:10.1f} tokens/s  ({ours:.3f} s wall, {ours_cpu:.3f} s "
        f"CPU; first call incl. compile {first:.2f} s)")
  for threads, (wall, cpu) in hf_runs.items():
    print(f"transformers.generate:  {total / wall:10.1f} tokens/s  ({wall:.3f} s wall, {cpu:.3f} s "
          f"CPU; torch threads {threads})")
  print(f"ratio (ours / transformers): {theirs / ours:.2f}x wall, {theirs_cpu / ours_cpu:.2f}x CPU")


if __name__ == "__main__":
  main()
