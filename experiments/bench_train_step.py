"""Train-step throughput and MFU: our jitted HPT step vs a plain PyTorch step, same weights, same loss.

Model: the project's tiny Qwen2 (vocab 512, hidden 256, 4 layers, 8 heads, 2 KV heads), random weights
built with `transformers` and copied into our parameters. Workload: 128 sequences x 96 tokens (32 prompt +
64 response), a mixed HPT batch (120 rollouts of 15 questions + 8 demonstration rows), the official loss
(RL token-sum / T + SFT token-mean over demonstration tokens − 0.001 · token-mean entropy), then global-norm
clip 1.0 and AdamW (lr 5e-6, wd 0.01), over micro-batches of 32 rows whose gradients are summed (the
official arithmetic). Both sides compute the same loss on the same rows; the first loss values are printed
side by side as a check. Steps are timed interleaved (ours, torch, ours, ...) so that on a shared machine
both see the same load; medians are reported.

Ours runs in two layouts of the same rows (`--layouts`): `shared` (the default of the training loop:
each distinct prompt of the batch is computed once per step and the rows' responses attend to it,
`hpt_jax.models.shared_prefix`; 120 rollouts of 15 prompts need 15, not 120, prompt passes) and
`plain` (every row `prompt ++ response`, as torch computes it). Both give the same loss and gradient
(tests/test_train_step_shared_prompts.py; the first-step losses are printed side by side). MFU is
model FLOPs of the plain workload (what torch computes) over time; `computed` is what our program
really runs on its padded shapes, and each layout's floor line uses its own computed FLOPs.

Each step is timed in wall seconds and in process CPU seconds (`time.process_time`, all threads): on a
machine shared with other jobs the CPU seconds are the steadier measure of the work a step costs. The
load average is printed before and after. Log-probs use full logits by default (`--logprob-chunk 0`):
with a 512-token vocabulary the [rows, 96, 512] float32 logits of a micro-batch are 6 MB, so recomputing
chunks in the backward pass (what a 152k vocabulary needs) only costs time here.

MFU = model FLOPs per second / a float32 matmul peak measured in this run (jnp 2048² matmuls on CPU, 8192² on GPU).
Model FLOPs of one step = 3 × forward matmul FLOPs (2·params-in-matmuls per token, including the
unembedding, plus 4·L·S·N·H per token for attention scores and values over the S = 96 positions).
Compile time is excluded from our tokens/s and reported apart. The floor line is the step time if every
model FLOP ran at that peak and nothing else cost anything, and the speed-up over each torch layout that
time would give: no implementation of this arithmetic on this machine can beat it.

  python experiments/bench_train_step.py            # the issue's benchmark
  python experiments/bench_train_step.py --smoke    # a seconds-long version for CI
"""

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from flax import nnx

from hpt_jax import hybrid, upge
from hpt_jax.hybrid.objective import LossConfig
from hpt_jax.models import CausalLM, ModelConfig, RematPolicy
from hpt_jax.models.hf_keys import KEY_TABLES, to_ours
from hpt_jax.training import batching, optimizer as optim_lib, state as state_lib
from hpt_jax.training.train_step import TrainStep
from torch_peer import DEVICE as TORCH_DEVICE

ENTROPY_COEFF = 0.001


def hf_config(*, smoke: bool) -> transformers.Qwen2Config:
  sizes = (dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2) if smoke else
           dict(vocab_size=512, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                num_attention_heads=8, num_key_value_heads=2))
  return transformers.Qwen2Config(max_position_embeddings=2048, tie_word_embeddings=True, rms_norm_eps=1e-6,
                                  rope_theta=10000.0, pad_token_id=0, **sizes)


def our_params(hf: torch.nn.Module, config: ModelConfig) -> dict:
  """The HF model's weights in our parameter layout (pure dict), via the model's key table."""
  _, state = nnx.split(CausalLM(config, rngs=nnx.Rngs(0)), nnx.Param)
  tensors = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
  flat = dict(nnx.to_flat_state(state))
  for rule in KEY_TABLES[config.family]:
    if rule.path not in flat:
      continue
    var = flat[rule.path]
    sizes = rule.sizes(var.shape)
    keys = [rule.hf_key.format(i=i) for i in range(config.num_layers)] if rule.stacked else [rule.hf_key]
    parts = [to_ours(rule, tensors[k], sizes, {}) for k in keys]
    var.value = jnp.asarray(np.stack(parts) if rule.stacked else parts[0])
  return nnx.to_pure_dict(state)


def make_rows(*, vocab: int, prompt_len: int, response_len: int, rl_questions: int, demo_questions: int,
              n: int, seed: int) -> batching.Rows:
  """A mixed HPT batch through the real gate and router: all-wrong questions become demonstrations."""
  rng = np.random.default_rng(seed)
  q = rl_questions + demo_questions
  prompts = [rng.integers(1, vocab, prompt_len) for _ in range(q)]
  rollouts = [[rng.integers(1, vocab, response_len) for _ in range(n)] for _ in range(q)]
  rewards = [np.zeros(n) if i >= rl_questions else rng.integers(0, 2, n).astype(float) for i in range(q)]
  for i in range(rl_questions):
    rewards[i][0] = 1.0  # at least one correct: stays RL under γ = 0
  demos = [rng.integers(1, vocab, response_len) for _ in range(q)]
  decision = hybrid.decide(hybrid.HardGate(threshold=hybrid.Threshold.of_count(0)),
                           correct=np.array([int(r.sum()) for r in rewards]), num_rollouts=n)
  return hybrid.route(decision, prompts=prompts, rollouts=rollouts, rollout_rewards=rewards, demos=demos)


def _matmul_params(config: ModelConfig) -> tuple[int, int]:
  """(matmul parameters of one layer, of the unembedding)."""
  d, f, v = config.hidden_size, config.intermediate_size, config.vocab_size
  nh, kh, h = config.num_heads, config.num_kv_heads, config.head_dim
  return d * nh * h * 2 + d * kh * h * 2 + 3 * d * f, d * v


def step_flops(config: ModelConfig, *, rows: int, seq: int) -> float:
  """Model FLOPs of one step over `rows` plain rows of `seq` tokens: 3 x the forward's matmuls."""
  return shape_flops(config, m=1, bm=rows, r=seq)


def computed_flops(config: ModelConfig, batch: batching.MicroBatches) -> float:
  """Matmul FLOPs our step really runs on `batch`'s padded shapes (3 x forward), in either layout."""
  m, bm, r = batch.tokens.shape
  gp, p = (0, 0) if batch.prefix_tokens is None else batch.prefix_tokens.shape[1:]
  return shape_flops(config, m=m, bm=bm, r=r, gp=gp, p=p)


def shape_flops(config: ModelConfig, *, m: int, bm: int, r: int, gp: int = 0, p: int = 0) -> float:
  """Matmul FLOPs (3 x forward) of a step over M micro-batches of Bm rows of R slots.

  Plain (gp = 0): every slot of [M, Bm, R] through the layers, attention over R keys, unembedding
  everywhere. Shared prompts: the batch's M x Gp x P prefix slots (once per step) and the
  M x Bm x R suffix slots through the layers;
  prefix queries attend P keys, suffix queries P + R; the unembedding on the suffix slots only.
  """
  layer, unembed = _matmul_params(config)
  per_key = 4 * config.num_layers * config.num_heads * config.head_dim  # scores + values, per query-key pair
  if gp == 0:
    slots = m * bm * r
    return 3.0 * slots * (2 * (config.num_layers * layer + unembed) + per_key * r)
  prefix, suffix = m * gp * p, m * bm * r
  fwd = (prefix + suffix) * 2 * config.num_layers * layer + suffix * 2 * unembed
  fwd += per_key * (prefix * p + suffix * (p + r))
  return 3.0 * fwd


def matmul_peak(repeats: int) -> float:
  n = 2048 if jax.default_backend() == "cpu" else 8192  # a GPU needs a big product to reach its peak
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda x, y: x @ y)
  f(a, a).block_until_ready()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    f(a, a).block_until_ready()
    times.append(time.perf_counter() - t)
  return 2.0 * n ** 3 / min(times)


def torch_step_fn(hf, batch: batching.MicroBatches, *, width: int, one_batch: bool = False):
  """A plain PyTorch step with the same arithmetic: per micro-batch loss, backward, gradients summed
  over micro-batches (the official verl loop), then clip and AdamW. Dr.GRPO Â precomputed per group.
  `one_batch=True` merges the micro-batches into one forward/backward (torch's fastest layout here; the
  per-micro-batch SFT/entropy means then become batch means, the same work)."""
  opt = torch.optim.AdamW(hf.parameters(), lr=5e-6, betas=(0.9, 0.999), weight_decay=0.01)
  t = lambda x: torch.from_numpy(np.asarray(x)).to(TORCH_DEVICE)
  tokens, positions = t(batch.tokens).long(), t(batch.positions).long()
  attention, targets = t(batch.attention_mask).long(), t(batch.targets).long()
  mask, demo = t(batch.response_mask), t(batch.is_demo)
  rewards, groups = t(batch.rewards).double().reshape(-1), t(batch.group_ids).long().reshape(-1)
  adv = torch.zeros_like(rewards)
  for g in groups.unique():
    idx = groups == g
    adv[idx] = rewards[idx] - (rewards[idx].mean() if idx.sum() > 1 else 0.0)
  adv = adv.float().reshape(demo.shape)
  if one_batch:
    merge = lambda x: x.reshape(1, -1, *x.shape[2:])
    tokens, positions, attention, targets, mask, demo, adv = map(
        merge, (tokens, positions, attention, targets, mask, demo, adv))

  def micro_loss(m):
    logits = hf(input_ids=tokens[m], attention_mask=attention[m], position_ids=positions[m]).logits.float()
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, targets[m][..., None])[..., 0]
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    on = mask[m] & ~demo[m][:, None]
    off = mask[m] & demo[m][:, None]
    ratio = torch.exp(logp - logp.detach())
    rl = torch.where(on, -adv[m][:, None] * ratio, 0.0).sum() / width
    sft = -torch.where(off, logp, 0.0).sum() / off.sum().clamp(min=1)  # 0 when the micro-batch has no demo
    bonus = torch.where(mask[m], entropy, 0.0).sum() / mask[m].sum().clamp(min=1)
    return rl + sft - ENTROPY_COEFF * bonus

  def step():
    opt.zero_grad(set_to_none=True)
    total = 0.0
    for m in range(tokens.shape[0]):
      loss = micro_loss(m)
      loss.backward()
      total += loss.detach()  # a tensor: no device sync per micro-batch on a GPU
    norm = torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
    if torch.isfinite(norm) and norm <= 80.0:
      opt.step()
    return float(total)

  return step


def timed(fn) -> tuple[float, float]:
  """(wall seconds, process CPU seconds) of one call."""
  wall, cpu = time.perf_counter(), time.process_time()
  fn()
  return time.perf_counter() - wall, time.process_time() - cpu


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--smoke", action="store_true", help="tiny shapes, two repeats (CI)")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--rows-per-micro-batch", type=int, default=32,
                      help="our step accumulates gradients over micro-batches of this many rows")
  parser.add_argument("--layouts", default="shared,plain",
                      help="ours, comma-separated: shared (each distinct prompt once per micro-batch) and/or "
                      "plain (prompt ++ response rows, the torch peer's layout)")
  parser.add_argument("--remat", default="save_dots", choices=[p.value for p in RematPolicy],
                      help="ours: the per-layer remat policy (save_dots: the main job's)")
  parser.add_argument("--scan-layers", action=argparse.BooleanOptionalAction, default=True,
                      help="ours: the layers under lax.scan (default) or a Python loop (ModelConfig.scan_layers)")
  parser.add_argument("--logprob-chunk", type=int, default=0,
                      help="positions per log-prob chunk (recomputed in the backward pass); 0 = full logits")
  args = parser.parse_args()
  smoke = args.smoke
  repeats = 2 if smoke else args.repeats
  prompt_len, response_len = (8, 8) if smoke else (32, 64)
  rl_questions, demo_questions, n = (3, 2, 2) if smoke else (15, 8, 8)

  torch.manual_seed(0)
  hf = transformers.Qwen2ForCausalLM(hf_config(smoke=smoke)).float()
  config = ModelConfig.from_hf_config(hf.config.to_dict(), remat=RematPolicy(args.remat),
                                      scan_layers=args.scan_layers)
  params = our_params(hf, config)
  rows = make_rows(vocab=config.vocab_size, prompt_len=prompt_len, response_len=response_len,
                   rl_questions=rl_questions, demo_questions=demo_questions, n=n, seed=0)
  seq = prompt_len + response_len
  bm = min(4 if smoke else args.rows_per_micro_batch, rows.num_rows)
  plain_batch = batching.pack(rows, config=batching.PackConfig(length_buckets=(seq,), rows_per_micro_batch=bm))
  shared = batching.SharedPrompts(prompt_buckets=(prompt_len,), response_buckets=(response_len,))
  batches = {"plain": plain_batch, "shared": batching.pack(rows, config=batching.PackConfig(
      length_buckets=(seq,), rows_per_micro_batch=bm, shared_prompts=shared))}
  layouts = [name for name in ("shared", "plain") if name in args.layouts.split(",")]
  tokens = rows.num_rows * seq

  optimizer = optim_lib.make_optimizer(optim_lib.OptimConfig())
  loss = LossConfig(algorithm=upge.HptRl(width=response_len), rl_width=response_len,
                    entropy_coeff=ENTROPY_COEFF, logprob_chunk=args.logprob_chunk or None)
  step = TrainStep(config, loss=loss, optimizer=optimizer)
  runners, compile_s, first_loss = {}, {}, {}
  for layout in layouts:
    state = state_lib.create_train_state(config, optimizer, seed=0, params=params)
    device_batch = step.place_batch(batches[layout])
    t = time.perf_counter()
    state, metrics = step(state, device_batch)
    jax.block_until_ready(state.params)
    compile_s[layout] = time.perf_counter() - t
    first_loss[layout] = float(metrics["loss/total"])
    holder = {"state": state}

    def jax_step(holder=holder, device_batch=device_batch):
      holder["state"], _ = step(holder["state"], device_batch)
      jax.block_until_ready(holder["state"].params)

    runners[f"ours ({layout})"] = jax_step

  hf = hf.to(TORCH_DEVICE)  # the peer on the same kind of chip (BENCH_TORCH_DEVICE)
  torch_step = torch_step_fn(hf, plain_batch, width=response_len)
  hf_one = transformers.Qwen2ForCausalLM(hf.config).float().to(TORCH_DEVICE)
  hf_one.load_state_dict(hf.state_dict())  # the same start weights (hf has taken no step yet)
  torch_one_step = torch_step_fn(hf_one, plain_batch, width=response_len, one_batch=True)
  t = time.perf_counter()
  first_loss_torch = torch_step()  # warm-up (also the same-weights check)
  torch_warm_s = time.perf_counter() - t
  torch_one_step()
  runners["torch"] = torch_step
  runners["torch one batch"] = torch_one_step
  # Interleaved (each of ours, torch, torch one batch, then again): on a shared machine all see the same load.
  load_before = os.getloadavg()[0]
  peaks = [matmul_peak(3)]
  times = {name: [] for name in runners}
  for _ in range(repeats):
    for name, run in runners.items():
      times[name].append(timed(run))
  med = {name: (statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts))
         for name, ts in times.items()}
  peaks.append(matmul_peak(3))
  peak = max(peaks)  # the best the machine gave us, before or after the timed steps
  flops = step_flops(config, rows=rows.num_rows, seq=seq)
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, torch on {TORCH_DEVICE}, threads "
        f"{torch.get_num_threads()}; {rows.num_rows} sequences x {seq} tokens ({int(rows.is_demo.sum())} "
        f"demonstration rows, {len({tuple(p) for p in rows.prompts})} distinct prompts); both sides in "
        f"{plain_batch.tokens.shape[0]} micro-batches of {bm} rows; log-prob chunk "
        f"{args.logprob_chunk or 'none (full logits)'}")
  if "shared" in batches and "shared" in layouts:
    sb = batches["shared"]
    gp, p = sb.prefix_tokens.shape[1:]
    print(f"ours (shared): each distinct prompt of the batch once per step, {sb.prefix_tokens.shape[0]} x {gp} "
          f"prefix slots x {p}, then {sb.tokens.shape[1]} rows x {sb.tokens.shape[2]} per micro-batch; "
          f"same loss and gradient as the plain rows (tests/test_train_step_shared_prompts.py)")
  print("first-step loss: " + "  ".join(f"ours ({k}) {v:.6f}" for k, v in first_loss.items())
        + f"  torch {first_loss_torch:.6f}")
  print(f"matmul peak (f32): {peak / 1e9:.1f} GFLOP/s; model FLOPs per step {flops / 1e9:.2f} GFLOP (128 rows x "
        f"{seq}, what torch computes); MFU below = model FLOPs / time / peak")
  print(f"load average (1 min): {load_before:.1f} before the timed steps, {os.getloadavg()[0]:.1f} after")
  for name, (wall, cpu) in med.items():
    layout = name[6:-1] if name.startswith("ours") else None
    extra = (f"  computed {computed_flops(config, batches[layout]) / 1e9:.4g} GFLOP "
             f"(compile + first step {compile_s[layout]:.1f} s)" if layout else
             (f"  (first step {torch_warm_s:.1f} s)" if name == "torch" else ""))
    print(f"{name:16s}: {tokens / wall:8.0f} tokens/s  step {wall * 1e3:8.1f} ms  {cpu:6.2f} CPU-s  "
          f"MFU {flops / wall / peak:6.1%}{extra}")
  for layout in layouts:
    wall, cpu = med[f"ours ({layout})"]
    t_wall, t_cpu = med["torch"]
    o_wall, o_cpu = med["torch one batch"]
    print(f"speed-up ours ({layout})/torch, wall: {t_wall / wall:.2f}x same micro-batches, {o_wall / wall:.2f}x vs "
          f"torch in one batch; CPU seconds: {t_cpu / cpu:.2f}x, {o_cpu / cpu:.2f}x (medians of {repeats})")
  for layout in layouts:
    floor_s = computed_flops(config, batches[layout]) / peak  # every FLOP we compute at the peak, nothing else
    print(f"floor, ours ({layout}) (its computed FLOPs at 100 % of the measured peak): step {floor_s * 1e3:8.1f} ms; "
          f"the best ratio it allows: {med['torch'][0] / floor_s:.2f}x vs torch same micro-batches, "
          f"{med['torch one batch'][0] / floor_s:.2f}x vs torch one batch")
  for name, ts in times.items():
    print(f"  {name}: wall ms {[round(t[0] * 1e3) for t in ts]}, CPU ms {[round(t[1] * 1e3) for t in ts]}")


if __name__ == "__main__":
  main()
