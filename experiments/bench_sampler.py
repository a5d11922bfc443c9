"""Rollout throughput: our jitted sampler vs `transformers.generate` (torch, CPU), same weights.

Model: the project's tiny Qwen2 (vocab 512, hidden 256, 4 layers, 8 heads, 2 KV heads), random weights
built with `transformers`, saved and loaded into our `CausalLM` by `models.hf_io`. Workload: 128 sequences x 64 new tokens,
temperature 1.0 (HPT's rollout setting), no EOS, so both sides produce exactly 128 x 64 tokens.
Compile time is reported separately and excluded from our tokens/s (one program serves a whole run).
The sides take turns (ours, transformers at 1 thread, at torch's default threads, ours, ...), so a
change of the machine's load hits both; CPU seconds (all threads of the process) are printed beside
wall time, since on shared cores wall time depends on the other load much more.

The floor analysis at the end: the matmul FLOPs our program performs (`sampler_flops`, incl. the
padded prompt slots and the cache slots attention reads), the float32 matmul rates measured in the same
run (the decode loop's largest product [B, D] x [D, 2F], and 2048^2), and the ratio over transformers
that 100 % of the better rate would give: how far the measured ratio can go by faster kernels alone.
The ceiling line: the same run's dense matmuls (prefill, decode, LM head) back to back in one XLA
program with nothing else (`dense_chain`), timed in the same rotation: the ratio our sampler would reach
if attention, RoPE, cache writes and sampling cost nothing, with XLA:CPU's own matmul kernels.

  python experiments/bench_sampler.py            # the issue's benchmark
  python experiments/bench_sampler.py --smoke    # a seconds-long version for CI
"""

import argparse
import dataclasses
import os
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from flax import nnx

from hpt_jax.models import ModelConfig
from hpt_jax.models.hf_io import load_pretrained
from hpt_jax.sampling import Buckets, Categorical, Sampler, phase_ends
from hpt_jax.sampling.lm import CausalLMDecoder
from hpt_jax.sampling.sampler import left_pad, prefill_tokens
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


def linear_flops_per_token(config: ModelConfig) -> int:
  """Matmul FLOPs of one token through one layer's projections and MLP (q, k, v, o, gate, up, down)."""
  d, f = config.hidden_size, config.intermediate_size
  nh, kh = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
  return 2 * d * (nh + 2 * kh) + 2 * nh * d + 2 * d * 2 * f + 2 * f * d


@dataclasses.dataclass(frozen=True)
class SamplerFlops:
  """Matmul FLOPs of one `generate` call (float32 multiply-adds x 2)."""

  prefill: float    # projections/MLP of the B x P prompt slots or the packed rows (last layer: o/MLP 1 row)
  decode: float     # projections/MLP of the (T - 1) decode steps x B rows
  lm_head: float    # [B, D] x [D, V] once per response token
  attention: float  # scores and probs . V over the cache slots read
  real_prompt: float  # the prefill's share for the real (unpadded) prompt tokens only

  @property
  def total(self) -> float:
    return self.prefill + self.decode + self.lm_head + self.attention

  @property
  def without_padding(self) -> float:
    """What an implementation that never computes a padded prompt slot would do."""
    return self.total - self.prefill + self.real_prompt


def sampler_flops(config: ModelConfig, *, batch: int, prompt_len: int, new_tokens: int,
                  real_prompt_tokens: int, decode_phases: int, prefill_rows: int | None = None
                  ) -> SamplerFlops:
  """Matmul FLOPs our sampler performs for B = batch rows, P = prompt_len, T = new_tokens.

  Mirrors the program: the prefill runs every layer on all B * P slots, or on `prefill_rows` packed
  rows (`Sampler(prefill_granules=)`), except the last layer's o-proj and MLP (last position only,
  `last_only`); decode step j (j = 1..T-1) runs one row per sequence and its
  attention reads the phase's P + end slots (`phase_ends`); the LM head runs once per response token.
  """
  per_token = linear_flops_per_token(config)
  d, v, layers = config.hidden_size, config.vocab_size, config.num_layers
  nh, kh = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
  qkv = 2 * d * (nh + 2 * kh)
  rest = per_token - qkv
  prefill_per_token = layers * per_token - rest  # the last layer's o/MLP run for one row only
  rows = batch * prompt_len if prefill_rows is None else prefill_rows
  prefill = rows * prefill_per_token + batch * rest
  real_prompt = real_prompt_tokens * prefill_per_token + batch * rest
  decode = (new_tokens - 1) * batch * layers * per_token
  lm_head = new_tokens * batch * 2 * d * v
  ends = phase_ends(new_tokens, decode_phases)
  attend = lambda queries, slots: 4 * queries * nh * slots  # q.k and p.v, every query head
  attention = batch * (layers - 1) * attend(prompt_len, prompt_len + ends[0])
  attention += batch * attend(1, prompt_len + ends[0])
  start = 1
  for end in ends:
    attention += (end - start) * batch * layers * attend(1, prompt_len + end)
    start = end
  return SamplerFlops(prefill=float(prefill), decode=float(decode), lm_head=float(lm_head),
                      attention=float(attention), real_prompt=float(real_prompt))


def dense_chain(config: ModelConfig, *, batch: int, new_tokens: int, prefill_rows: int):
  """The dense matmuls of one `generate` call, back to back in one jitted program, and its inputs.

  The same products in the same order and shapes as `sampler_flops` counts for prefill, decode and the
  LM head (prefill: every layer on `prefill_rows` rows, the last layer's o/MLP on `batch` rows; then
  `new_tokens - 1` decode steps of `batch` rows through every layer; the LM head once per response
  token), joined by a few elementwise ops so that each product feeds the next; no attention, norms,
  RoPE, cache writes or sampling. Its time is what our sampler would take if all of that were free:
  the ceiling that XLA:CPU's matmul kernels set on this machine.

  Returns:
    (jitted fn(weights, x) -> [batch, V], (weights, x [prefill_rows, D])).
  """
  d, f, v, layers = (config.hidden_size, config.intermediate_size, config.vocab_size,
                     config.num_layers)
  nh, kh = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
  shapes = dict(q=(d, nh), k=(d, kh), v=(d, kh), o=(nh, d), gate_up=(d, 2 * f), down=(f, d))
  keys = iter(jax.random.split(jax.random.key(0), len(shapes) * layers + 2))
  init = lambda shape: jax.random.normal(next(keys), shape, jnp.float32) * shape[0] ** -0.5
  weights = dict(layers=[{name: init(shape) for name, shape in shapes.items()} for _ in range(layers)],
                 head=init((d, v)))
  x = jax.random.normal(next(keys), (prefill_rows, d), jnp.float32)

  # The two RMS norms a layer has (without their weights) keep the values finite.
  norm = lambda x: x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6)

  def layer(w, x, out_rows=None):
    normed = norm(x)
    kv = normed @ w["k"] + normed @ w["v"]                     # where the cache write would take them
    attended = normed @ w["q"] + jnp.tile(kv, (1, nh // kh))  # stands in for attention's output
    if out_rows is not None:                                   # the prefill's last layer: last slots
      x, attended = x[:out_rows], attended[:out_rows]
    x = x + attended @ w["o"]
    gate_up = norm(x) @ w["gate_up"]
    return x + (jax.nn.silu(gate_up[:, :f]) * gate_up[:, f:]) @ w["down"]

  def run(weights, x):
    for i, w in enumerate(weights["layers"]):
      x = layer(w, x, out_rows=batch if i == layers - 1 else None)
    logits = x @ weights["head"]

    def step(_, carry):
      x, logits = carry
      x = norm(x) + jnp.resize(logits, x.shape)  # stands in for embedding the sampled token
      for w in weights["layers"]:
        x = layer(w, x)
      return x, x @ weights["head"]

    return jax.lax.fori_loop(0, new_tokens - 1, step, (x, logits))[1]  # [batch, V]

  return jax.jit(run), (weights, x)


def matmul_rate(m: int, k: int, n: int, *, repeats: int = 20) -> float:
  """Best float32 FLOP/s of a jitted [m, k] x [k, n] product on this machine, now."""
  a = jax.random.normal(jax.random.key(0), (m, k), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (k, n), jnp.float32)
  f = jax.jit(lambda x, y: x @ y)
  f(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    f(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2.0 * m * k * n / best


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
  parser.add_argument("--prefill_granules", type=int, default=16,
                      help="Sampler(prefill_granules=): prefill on the real prompt tokens packed into "
                      "multiples of 1/g of the padded batch (0: the padded prefill)")
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
                    buckets=Buckets(prompt=(prompt_bucket,), response=(new_tokens,)),
                    prefill_granules=args.prefill_granules)

  run_ours, first = ours_runner(sampler, params, prompts, new_tokens=new_tokens)
  # torch's OpenMP pool degrades badly when the cores are shared, so transformers is timed with one
  # thread and with torch's default, and compared at its faster setting.
  default_threads = torch.get_num_threads()
  thread_counts = sorted({1, default_threads} if args.torch_threads == 0 else {args.torch_threads})
  config = decoder.config
  prefill_rows = None
  if args.prefill_granules:
    mask = left_pad(prompts, length=prompt_bucket, pad_id=PAD)[1]
    prefill_rows = prefill_tokens(mask, granules=args.prefill_granules)
  chain, chain_args = dense_chain(config, batch=sequences, new_tokens=new_tokens,
                                  prefill_rows=prefill_rows or sequences * prompt_bucket)
  chain(*chain_args).block_until_ready()  # compile
  runners = {"ours": run_ours, "dense chain": lambda: chain(*chain_args).block_until_ready()}
  for threads in thread_counts:
    runners[threads] = hf_runner(hf, prompts, new_tokens=new_tokens, prompt_len=prompt_bucket,
                                 threads=threads)
  load_before = os.getloadavg()[0]
  medians = time_interleaved(runners, repeats=repeats)
  torch.set_num_threads(default_threads)
  ours, ours_cpu = medians.pop("ours")
  chain_wall, chain_cpu = medians.pop("dense chain")
  hf_runs = medians
  best_threads = min(hf_runs, key=lambda t: hf_runs[t][0])
  theirs, theirs_cpu = hf_runs[best_threads]
  total = sequences * new_tokens
  # CPU seconds (all threads of this process) are printed too: on a shared machine wall time
  # depends on the other load, CPU time much less.
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, torch on {TORCH_DEVICE}, {os.cpu_count()} CPUs, load "
        f"average {load_before:.1f} -> {os.getloadavg()[0]:.1f}; {sequences} sequences x {new_tokens} "
        f"new tokens, prompts left-padded to {prompt_bucket}, median of {repeats} interleaved runs; "
        f"ours: {decoder.decode_phases} decode phases, prefill_granules {args.prefill_granules}")
  print(f"hpt_jax sampler:        {total / ours:10.1f} tokens/s  ({ours:.3f} s wall, {ours_cpu:.3f} s "
        f"CPU; first call incl. compile {first:.2f} s)")
  for threads, (wall, cpu) in hf_runs.items():
    print(f"transformers.generate:  {total / wall:10.1f} tokens/s  ({wall:.3f} s wall, {cpu:.3f} s "
          f"CPU; torch threads {threads})")
  print(f"ratio (ours / transformers): {theirs / ours:.2f}x wall, {theirs_cpu / ours_cpu:.2f}x CPU")

  # The floor: our matmul work at the best matmul rate this machine gave in this run.
  flops = sampler_flops(config, batch=sequences, prompt_len=prompt_bucket, new_tokens=new_tokens,
                        real_prompt_tokens=sum(map(len, prompts)), decode_phases=decoder.decode_phases,
                        prefill_rows=prefill_rows)
  shape = f"[{sequences},{config.hidden_size}]x[{config.hidden_size},{2 * config.intermediate_size}]"
  rates = {shape: matmul_rate(sequences, config.hidden_size, 2 * config.intermediate_size)}
  if not args.smoke:
    rates["2048^2"] = matmul_rate(2048, 2048, 2048, repeats=3)
  peak = max(rates.values())
  floor, floor_real = flops.total / peak, flops.without_padding / peak
  print(f"floor: our matmul FLOPs per run {flops.total / 1e9:.2f} G (prefill {flops.prefill / 1e9:.2f}, "
        f"decode {flops.decode / 1e9:.2f}, LM head {flops.lm_head / 1e9:.2f}, attention "
        f"{flops.attention / 1e9:.2f}); without prompt padding {flops.without_padding / 1e9:.2f} G")
  print("floor: f32 matmul rate " + ", ".join(f"{k} {r / 1e9:.1f} GFLOP/s" for k, r in rates.items())
        + f"; ours runs at {flops.total / ours / 1e9:.1f} GFLOP/s wall ({flops.total / ours / peak:.0%} "
        f"of the best)")
  print(f"floor: at 100 % of {peak / 1e9:.1f} GFLOP/s our work takes {floor:.3f} s -> at most "
        f"{theirs / floor:.2f}x transformers ({theirs / floor_real:.2f}x without prompt padding)")
  # The ceiling XLA:CPU's kernels set: the same dense matmuls with nothing else, timed with the others.
  print(f"ceiling: our run's dense matmuls alone (prefill, decode, LM head back to back in one program, "
        f"no attention / RoPE / cache / sampling): {chain_wall:.3f} s wall, {chain_cpu:.3f} s CPU "
        f"({(flops.total - flops.attention) / chain_wall / 1e9:.1f} GFLOP/s) -> at most "
        f"{theirs / chain_wall:.2f}x transformers wall, {theirs_cpu / chain_cpu:.2f}x CPU; they are "
        f"{chain_wall / ours:.0%} of our run's wall time")


if __name__ == "__main__":
  main()
