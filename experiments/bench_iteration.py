"""One full post-training iteration, end to end: ours (the training loop's own step) vs trl's GRPOTrainer.

Workload (the issue's): the tiny Qwen2 (vocab 512, hidden 256, 4 layers, 8 heads, 2 KV heads, fp32),
16 prompts x 8 rollouts, prompts of the built-in arithmetic task (left-padded to 32 tokens), 64 new
tokens at temperature 1, rewards from the project's reward pool (2 worker processes, math verifier),
one optimizer step over the 128 rows in 4 micro-batches of 32 rows. Both sides start from the SAME
weights: one random `transformers` Qwen2 saved with `save_pretrained`, loaded by our `hf_io` and by
torch. trl runs on torch CPU, no vLLM, beta 0 (no reference model), loss_type "grpo", the same reward
function wrapped as a trl reward function, num_iterations 1 (so, like ours, it computes no separate
old log-probs: π_old = stop_gradient(π_θ)).

Our iteration is `hpt_jax.training.loop._Run.one_step`, the very function `loop.train` calls per step:
data → sampler (jitted prefill + while-loop decode) → reward pool → gate / routing → Â → pack → jitted
train step. The update runs the loop's default shared-prompt layout (`batch.shared_prompts`): each
distinct prompt of the batch is computed once per update and its rows' responses attend to it (trl computes
the prompt in every row: 8 times per question here), with the same loss and gradient as plain
`prompt ++ response` rows (tests/test_train_loop_shared_prompts.py); `--plain-rows` measures the plain
rows instead. Two rows are measured:
  * `grpo`: RowSource.ROLLOUTS + the GRPO loss: exactly trl's workload (128 RL rows per update).
  * `hpt`: HPT's gate + the official HPT loss. At random init no question is solved, so the gate sends
    every question to its demonstration (16 SFT rows): a lighter update, reported for completeness.
Old log-probs cost nothing on our side: the first mini-batch is on-policy and later ones reuse the
log-probs the sampler recorded (no extra forward pass) while sampling and training are the same fp32
policy (`old_logprobs=auto`); the bench prints the passes the loop actually ran (must be 0).

Peak memory is each side's own process (`ru_maxrss`, the interpreter, imports, compiled programs,
arrays); both sides score with the same `RewardPool` of 2 worker processes, which neither figure
includes. The floor analysis at the end: our iteration's matmul FLOPs (sampling: prefill once per
prompt, decode and LM head per row; update: forward + backward = 3 forwards over the slots the train
step really ran, read from the packed batches: Gp·P prefix + Bm·R response slots per micro-batch in the
shared layout, Bm·L row slots in the plain one), the best float32 matmul rate measured in the same run,
and the best ratio to trl that 100 % of it allows.

Each measurement runs in its own subprocess, so its peak RSS (`ru_maxrss`) is its own. The first
iteration (compilation on our side, lazy initialisation on trl's) is reported apart; the warm figure is
the median of the following iterations. We count XLA compilations (the `jax.monitoring` backend-compile
event) during the warm iterations: it must be 0. Scaling: our warm iteration time for 64/128/256/512
new tokens (8 rollouts) and for 4/8/16 rollouts (64 tokens), with the tokens actually generated.

Wall-clock figures depend on the machine's load (a shared 2-core box: the load average is printed);
process CPU seconds per iteration (user + system, all threads) are printed beside them as the
load-independent measure of work. `--warm-cache` adds a run of ours whose XLA programs come from a
persistent compilation cache (what a resumed or repeated run sees): our peak RSS is dominated by the
one-off compilation of the train step, which such a run skips.

  python experiments/bench_iteration.py                  # the issue's benchmark (~30-60 min on 2 busy cores)
  python experiments/bench_iteration.py --no-scaling --warm-cache --iters 3   # ours vs trl (+ hpt row)
  python experiments/bench_iteration.py --only-scaling --iters 2 --scaling-iters 2
  python experiments/bench_iteration.py --smoke          # a minuscule version for CI
  python experiments/bench_iteration.py --no-hpt --no-scaling --iters 4 --plain-rows   # plain-row update

Speed is compared INTERLEAVED: one process runs our iteration and trl's in turn (ours, trl, ours, ...),
so both see the same machine load (a shared box's load swings more than the ratio being measured);
the separate-process runs give each side's peak RSS. `--cpu-devices 2` splits our batch rows over two
XLA host devices (mesh.data = 2), one thread each.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

_PREFIX = "BENCH_RESULT "


@dataclasses.dataclass(frozen=True, kw_only=True)
class Workload:
  """One measured configuration (JSON-serialisable: it travels to the worker subprocess)."""
  prompts: int = 16
  rollouts: int = 8
  prompt_len: int = 32
  new_tokens: int = 64
  micro_rows: int = 32
  iters: int = 4  # the first (compile) one included
  algorithm: str = "grpo"  # "grpo" (trl's workload) or "hpt" (the gate + HPT's loss)
  cpu_devices: int = 1  # ours: XLA host devices, batch rows split over them (mesh.data)
  logprob_chunk: int = 0  # ours: positions per log-prob chunk in the train step; 0 = full logits
  remat: str = "save_dots"  # ours: the train step's RematPolicy (the main job's; "none" keeps everything)
  torch_threads: int = 0  # trl: torch intra-op threads; 0 = torch's default (one per core)
  shared_prompts: bool = True  # ours: the loop's shared-prompt layout (False: plain prompt ++ response rows)
  response_granules: int = 0  # ours: batch.response_granules (0: the update computes every response slot)

  @property
  def rows(self) -> int:
    return self.prompts * self.rollouts


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelSize:
  hidden: int = 256
  intermediate: int = 704
  layers: int = 4
  heads: int = 8
  kv_heads: int = 2


SMOKE_MODEL = ModelSize(hidden=64, intermediate=128, layers=1, heads=2, kv_heads=1)
_VOCAB = 512
_PROBLEMS = 256
_HELD_OUT = 4  # = validation.num_problems, so the loop reuses the prepared task files


# ------------------------------------------------------------------------------------------- shared set-up

def prepare(root: pathlib.Path, size: ModelSize) -> dict[str, str]:
  """The built-in task's files and one random HF Qwen2 (with the task's tokenizer) both sides load."""
  import torch
  import transformers

  from hpt_jax import data as data_lib

  task = data_lib.materialize_builtin_task(root / "builtin_task", data_lib.BuiltinTaskConfig(
      levels=(1,), train_per_level=_PROBLEMS, eval_per_level=_HELD_OUT, vocab_size=_VOCAB))
  tok = transformers.AutoTokenizer.from_pretrained(str(task.tokenizer_dir))
  eos = int(tok.eos_token_id)
  pad = int(tok.pad_token_id) if tok.pad_token_id is not None else eos
  hf_config = transformers.Qwen2Config(
      vocab_size=_VOCAB, hidden_size=size.hidden, intermediate_size=size.intermediate,
      num_hidden_layers=size.layers, num_attention_heads=size.heads, num_key_value_heads=size.kv_heads,
      max_position_embeddings=1024, tie_word_embeddings=True, rms_norm_eps=1e-6, rope_theta=10000.0,
      eos_token_id=eos, pad_token_id=pad, bos_token_id=None)
  torch.manual_seed(0)
  model = transformers.Qwen2ForCausalLM(hf_config).float()
  hf_dir = root / "hf_init"
  model.save_pretrained(hf_dir)
  tok.save_pretrained(hf_dir)
  return {"hf_dir": str(hf_dir), "builtin_dir": str(root / "builtin_task")}


def _peak_rss_mib() -> float:
  import resource
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _cpu_seconds() -> float:
  """User + system CPU time of this process (all threads): the work done, whatever the machine's load."""
  import resource
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def _emit(result: dict) -> None:
  print(_PREFIX + json.dumps(result), flush=True)


# ------------------------------------------------------------------------------------------------ ours

class CompileCounter:
  """Counts XLA backend compilations (one event per compiled program, cache hits included)."""

  def __init__(self):
    import jax
    self.names: list[str] = []
    jax.monitoring.register_event_duration_secs_listener(self._on_event)

  def _on_event(self, event: str, duration: float, **kwargs) -> None:
    del duration
    if event == "/jax/core/compile/backend_compile_duration":
      self.names.append(str(kwargs.get("fun_name", "?")))


def our_config(w: Workload, paths: dict[str, str]):
  from hpt_jax.models import RematPolicy, presets
  from hpt_jax.training import config as c

  loss, rows = c.baseline(w.algorithm, width=w.new_tokens)
  loss = dataclasses.replace(loss, logprob_chunk=w.logprob_chunk or None)
  return c.TrainConfig(
      mesh=c.MeshConfig(data=w.cpu_devices),
      # With hf_dir the architecture comes from config.json; `config` gives the run-time choices
      # (remat), as in the main job (experiments/configs/builtin_tiny.py).
      model=c.ModelSource(hf_dir=pathlib.Path(paths["hf_dir"]), config=presets.tiny(remat=RematPolicy(w.remat))),
      data=c.DataConfig(builtin_problems=_PROBLEMS, builtin_levels=(1,),
                        builtin_dir=pathlib.Path(paths["builtin_dir"]), max_prompt_length=w.prompt_len,
                        max_response_length=w.new_tokens, reward_workers=2),
      sampling=c.SamplingConfig(rollouts_per_prompt=w.rollouts, prompt_buckets=(w.prompt_len,),
                                response_buckets=(w.new_tokens,)),
      gate=c.GateConfig(gamma_count=0),
      batch=c.BatchConfig(prompts_per_step=w.prompts, rows_per_optimizer_step=w.rows,
                          rows_per_micro_batch=min(w.micro_rows, w.rows), shared_prompts=w.shared_prompts,
                          response_granules=w.response_granules),
      optim=c.OptimConfig(learning_rate=1e-6, weight_decay=0.0, skip_above_norm=None),
      phases=(c.Phase(loss=loss, rows=rows, steps=w.iters),),
      validation=c.ValidationConfig(every_steps=0, num_problems=_HELD_OUT),
      checkpoint=c.CheckpointConfig(every_steps=10**6, export_hf=False),
      logging=c.LoggingConfig(jsonl=False, tensorboard=False, progress_bar=False),
  )


class OursSession:
  """Our loop's objects for one workload, stepped one iteration at a time (alone or between trl's)."""

  def __init__(self, w: Workload, paths: dict[str, str]):
    import jax

    from hpt_jax.training import loop

    if paths.get("compilation_cache"):
      # A persistent compilation cache, as a resumed or repeated run would have: programs are loaded,
      # not compiled (the compile events still fire, so the recompilation count is unaffected).
      jax.config.update("jax_compilation_cache_dir", paths["compilation_cache"])
      jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
      jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    self.w = w
    t, cpu = time.perf_counter(), _cpu_seconds()
    self.counter = CompileCounter()
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="bench_ours_"))
    self.run = loop._Run(our_config(w, paths), workdir, None)  # the loop's own objects, built once
    # The shapes of the batches each update ran (for the floor's FLOP count): read on the way out of
    # the loop's own `update_batches`, which is otherwise untouched.
    self.update_shapes: list[list[dict]] = []
    update_batches = self.run.update_batches

    def recorded(*args, **kwargs):
      out = update_batches(*args, **kwargs)
      self.update_shapes.append([batch_shape(b) for b in out[0]])
      return out

    self.run.update_batches = recorded
    self.stages = {"built": _peak_rss_mib()}
    self.state = self.run.initial_state()
    jax.block_until_ready(self.state.params)
    self.stages["state"] = _peak_rss_mib()
    self.build = {"seconds": time.perf_counter() - t, "cpu_seconds": _cpu_seconds() - cpu}
    self.iters: list[dict] = []
    self.compiles_after_first: list[str] = []

  def iterate(self) -> dict:
    """One full iteration (the loop's `one_step`); returns its figures."""
    import jax

    step = len(self.iters)
    before = len(self.counter.names)
    t, cpu = time.perf_counter(), _cpu_seconds()
    self.state, m = self.run.one_step(self.state, step)
    jax.block_until_ready(self.state.params)
    total = time.perf_counter() - t
    self.iters.append({
        "seconds": total, "cpu_seconds": _cpu_seconds() - cpu, "sampling": m["perf/sampling_seconds"],
        "reward": m["perf/reward_seconds"], "update": m["perf/training_seconds"],
        "host": total - m["perf/sampling_seconds"] - m["perf/reward_seconds"] - m["perf/training_seconds"],
        "generated_tokens": m["response/length_mean"] * self.w.rows,
        "rows": m["gate/rl_rows"] + m["gate/sft_rows"], "loss": m["train/loss"],
        "old_logprob_passes": m["train/recomputed_old_logp_batches"]})
    if step > 0:
      self.compiles_after_first += self.counter.names[before:]
    self.stages[f"iter{step}"] = _peak_rss_mib()
    return self.iters[-1]

  def close(self) -> None:
    self.run.data.close()
    self.run.writer.close()
    self.run.checkpointer.close()

  def result(self) -> dict:
    import jax

    iters, names = self.iters, self.counter.names
    warm = iters[1:] or iters  # a one-iteration run (filling a compilation cache) has no warm figure
    med = lambda k: statistics.median(x[k] for x in warm)
    return {
        "side": "ours", "algorithm": self.w.algorithm, "workload": dataclasses.asdict(self.w),
        "device": f"{jax.devices()[0].platform} x{jax.device_count()}",
        "build_seconds": self.build["seconds"], "build_cpu_seconds": self.build["cpu_seconds"],
        "first_seconds": iters[0]["seconds"], "first_cpu_seconds": iters[0]["cpu_seconds"],
        "warm_seconds": med("seconds"),
        "warm_all": [x["seconds"] for x in warm], "warm_cpu_seconds": med("cpu_seconds"),
        "warm_cpu_all": [x["cpu_seconds"] for x in warm],
        "split": {k: med(k) for k in ("sampling", "reward", "update", "host")},
        # π_old: teacher-forced passes run (all iterations) and whether the loop would run any (AUTO
        # recomputes only when the sampling policy differs from the training one or is not fp32).
        "old_logprob_passes": sum(x["old_logprob_passes"] for x in iters),
        "old_logprob_recompute_configured": any(r is not None for r in self.run.recompute),
        "decode_phases": getattr(self.run.sampler.model, "decode_phases", 1),
        "generated_tokens": med("generated_tokens"), "train_rows": med("rows"),
        "update_shapes": self.update_shapes[-1], "shared_prompts": self.w.shared_prompts,
        "compiles_first": len(names) - len(self.compiles_after_first),
        "compiles_after_first": len(self.compiles_after_first),
        "recompiled": sorted(set(self.compiles_after_first)),
        "compiled_in_first": sorted(set(names) - set(self.compiles_after_first)),
        "peak_rss_mib": _peak_rss_mib(), "peak_rss_by_stage": self.stages,
    }


def batch_shape(batch) -> dict:
  """The static shape of a packed batch: m micro-batches of bm rows; plain rows of `seq` slots, or the
  shared-prompt layout's gp prefix slots of p and bm response rows of r."""
  m, bm = batch.row_valid.shape
  if batch.prefix_tokens is None:
    return {"m": m, "bm": bm, "seq": batch.tokens.shape[2]}
  _, gp, p = batch.prefix_tokens.shape
  return {"m": m, "bm": bm, "gp": gp, "p": p, "r": batch.tokens.shape[2]}


def update_flops(config, shape: dict) -> float:
  """Matmul FLOPs of one update (forward + backward = 3 forwards) over the slots it really runs.

  Plain rows: m·bm rows of `seq` slots; shared prompts: m·gp·p prefix slots and m·bm·r response
  slots (`bench_train_step.shape_flops`; the prefix's last slot's state is reused for the first
  response token, so the LM head runs on the response slots only).
  """
  from bench_train_step import shape_flops

  if "seq" in shape:
    return shape_flops(config, m=shape["m"], bm=shape["bm"], r=shape["seq"])
  return shape_flops(config, m=shape["m"], bm=shape["bm"], r=shape["r"], gp=shape["gp"], p=shape["p"])


def run_ours(w: Workload, paths: dict[str, str]) -> dict:
  session = OursSession(w, paths)
  try:
    for _ in range(w.iters):
      session.iterate()
  finally:
    session.close()
  return session.result()


# ------------------------------------------------------------------------------------------------- trl

def run_trl(w: Workload, paths: dict[str, str], *, between=None) -> dict:
  """trl's GRPOTrainer on the workload; `between()`, if given, runs after each trl iteration and its
  time is excluded from trl's figures (the interleaved comparison runs our iterations there)."""
  import datasets
  import torch
  import transformers
  import trl

  from hpt_jax.data import tokenize_examples, load_openr1
  from hpt_jax.data import PromptTemplate
  from hpt_jax.rewards.pool import RewardPool
  from hpt_jax.training.data_source import pool_scorer

  tok = transformers.AutoTokenizer.from_pretrained(paths["hf_dir"])
  examples, _ = load_openr1(pathlib.Path(paths["builtin_dir"]) / "train.parquet")
  ds = tokenize_examples(examples, tok, template=PromptTemplate.CHAT, max_prompt_length=w.prompt_len,
                         max_response_length=w.new_tokens)
  texts = [tok.decode(list(ds.prompt_tokens[i]), skip_special_tokens=False) for i in range(len(ds))]
  # trl tokenises the prompt text itself; check that it gets exactly our prompt tokens.
  mismatched = sum(list(tok(t)["input_ids"]) != list(ds.prompt_tokens[i]) for i, t in enumerate(texts))
  truths = [json.dumps(ds.ground_truths[i]) for i in range(len(ds))]
  train = datasets.Dataset.from_dict({"prompt": texts, "ground_truth": truths})

  pool = RewardPool(num_workers=2, timeout_s=5.0)
  pool.start()
  score = pool_scorer(pool)

  spent = {"generate": [], "reward": []}

  def reward(completions, ground_truth, **kwargs):
    del kwargs
    t = time.perf_counter()
    scores, _ = score(list(completions), [json.loads(g) for g in ground_truth])
    spent["reward"].append(time.perf_counter() - t)
    return [float(s) for s in scores]

  marks: dict[str, list[float]] = {"start": [], "end": [], "cpu_start": [], "cpu_end": []}
  lengths: list[float] = []

  class Clock(transformers.TrainerCallback):
    def on_train_begin(self, args, state, control, **kwargs):
      marks["start"].append(time.perf_counter())
      marks["cpu_start"].append(_cpu_seconds())

    def on_step_end(self, args, state, control, **kwargs):
      # trl generates the next step's rollouts at the start of that step, so an iteration runs from
      # here (or the training start) to the next step end.
      marks["end"].append(time.perf_counter())
      marks["cpu_end"].append(_cpu_seconds())
      if between is not None and state.global_step < args.max_steps:  # none after the last one
        between()
      marks["start"].append(time.perf_counter())
      marks["cpu_start"].append(_cpu_seconds())

    def on_log(self, args, state, control, logs=None, **kwargs):
      if logs and "completions/mean_length" in logs:
        lengths.append(float(logs["completions/mean_length"]))

  # trl runs where our JAX code runs: CPU here; on a GPU machine BENCH_TORCH_DEVICE=cuda (torch_peer
  # sets TF32 float32 matmuls there, JAX's default precision on GPU).
  from torch_peer import DEVICE as TORCH_DEVICE
  if w.torch_threads:
    # On an oversubscribed machine torch's spinning OpenMP threads burn CPU time waiting for each
    # other; one thread measures trl's work rather than the machine's load.
    torch.set_num_threads(w.torch_threads)
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_pretrained(paths["hf_dir"], dtype=torch.float32)
  generate = model.generate

  def timed_generate(*a, **kw):  # trl calls the (unwrapped, CPU) model's generate once per iteration
    t = time.perf_counter()
    out = generate(*a, **kw)
    spent["generate"].append(time.perf_counter() - t)
    return out

  model.generate = timed_generate
  steps_per_update = max(1, w.rows // w.micro_rows)
  args = trl.GRPOConfig(
      output_dir=tempfile.mkdtemp(prefix="bench_trl_"), use_cpu=TORCH_DEVICE.type == "cpu", bf16=False, fp16=False,
      per_device_train_batch_size=min(w.micro_rows, w.rows), gradient_accumulation_steps=steps_per_update,
      num_generations=w.rollouts, max_completion_length=w.new_tokens, temperature=1.0, top_p=1.0, top_k=0,
      beta=0.0, num_iterations=1, loss_type="grpo", learning_rate=1e-6, weight_decay=0.0,
      max_steps=w.iters, logging_steps=1, report_to="none", save_strategy="no", seed=0,
      disable_tqdm=True, dataloader_num_workers=0, use_vllm=False)
  trainer = trl.GRPOTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=train,
                            processing_class=tok, callbacks=[Clock()])
  try:
    trainer.train()
  finally:
    pool.close()
  per_iter = [b - a for a, b in zip(marks["start"], marks["end"])]
  per_iter_cpu = [b - a for a, b in zip(marks["cpu_start"], marks["cpu_end"])]
  return {
      "side": "trl", "algorithm": "grpo", "workload": dataclasses.asdict(w),
      "device": f"torch {model.device}, {torch.get_num_threads()} threads", "trl_version": trl.__version__,
      "first_seconds": per_iter[0], "warm_seconds": statistics.median(per_iter[1:]), "warm_all": per_iter[1:],
      "warm_cpu_seconds": statistics.median(per_iter_cpu[1:]), "warm_cpu_all": per_iter_cpu[1:],
      "generated_tokens": statistics.median(lengths[1:] or lengths) * w.rows if lengths else float("nan"),
      "split": {"sampling": statistics.median(spent["generate"][1:]),
                "reward": statistics.median(spent["reward"][1:]),
                "update_and_rest": statistics.median(
                    t - g - r for t, g, r in zip(per_iter[1:], spent["generate"][1:], spent["reward"][1:]))},
      "prompt_token_mismatches": mismatched, "peak_rss_mib": _peak_rss_mib(),
  }


def run_interleaved(w: Workload, paths: dict[str, str]) -> dict:
  """Ours and trl in ONE process, one iteration each in turn (ours, trl, ours, trl, ...), so both see
  the same machine load; each side's wall and CPU seconds are taken over its own iterations only.
  Peak memory is not separable here: the separate-process runs give it."""
  ours = OursSession(w, paths)
  try:
    ours.iterate()  # our compilation, before trl's first (lazy-initialisation) iteration
    theirs = run_trl(w, paths, between=ours.iterate)
  finally:
    ours.close()
  mine = ours.result()
  pairs = list(zip(mine["warm_all"], theirs["warm_all"]))
  cpu_pairs = list(zip(mine["warm_cpu_all"], theirs["warm_cpu_all"]))
  return {"side": "interleaved", "ours": mine, "trl": theirs,
          "wall_ratios": [t / o for o, t in pairs], "cpu_ratios": [t / o for o, t in cpu_pairs]}


# ---------------------------------------------------------------------------------------------- driver

def _worker_main(jobs: str, paths: str) -> None:
  p = json.loads(paths)
  for side, item in json.loads(jobs):
    w = Workload(**item)
    result = {"ours": run_ours, "trl": run_trl, "interleaved": run_interleaved}[side](w, p)
    # What the process holds besides the run (a torch import alone is ~190 MB of RSS).
    _emit(result | {"torch_imported": "torch" in sys.modules})


Job = tuple[str, Workload]  # ("ours" | "trl" | "interleaved", workload)


def run_workers(jobs: list[Job], paths: dict[str, str], *, timeout: float) -> list[dict]:
  """Runs measurements one after another in ONE fresh interpreter and returns their results.

  A process of its own gives a measurement its own peak RSS (a later job in the same process cannot
  change an earlier job's figure, which is taken when it ends). Jobs in one process share the
  interpreter start, imports and every compiled program with the same shapes (the loop caches its
  train step), which is what the smoke run uses. They must agree on `cpu_devices`, fixed when the
  process starts JAX.
  """
  devices = {w.cpu_devices for _, w in jobs}
  if len(devices) != 1:
    raise ValueError(f"jobs in one worker must share cpu_devices, got {sorted(devices)}")
  for side, w in jobs:
    print(f"running {side} {dataclasses.asdict(w)}", file=sys.stderr, flush=True)
  env = dict(os.environ)
  # Several XLA host devices: each runs its shard of the batch on its own thread (XLA:CPU runs most
  # of a small model's ops single-threaded, so one device leaves the second core idle).
  flags = [f for f in env.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f]
  env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices.pop()}"])
  cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(
      [(side, dataclasses.asdict(w)) for side, w in jobs]), "--paths", json.dumps(paths)]
  import resource
  t, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout * len(jobs), env=env)
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  # The whole worker, its start, imports and compilation included (the reward pool's processes too).
  print(f"worker ({', '.join(side for side, _ in jobs)}): {time.perf_counter() - t:.1f} s wall, "
        f"{after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime:.1f} s CPU", file=sys.stderr, flush=True)
  lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(_PREFIX)]
  for ln in lines:
    print(ln, file=sys.stderr, flush=True)  # every result is kept even if a later run fails
  if proc.returncode != 0 or len(lines) != len(jobs):
    raise RuntimeError(f"worker failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
  return [json.loads(ln[len(_PREFIX):]) for ln in lines]


def run_worker(side: str, w: Workload, paths: dict[str, str], *, timeout: float) -> dict:
  """One measurement in a fresh interpreter (its own peak RSS)."""
  return run_workers([(side, w)], paths, timeout=timeout)[0]


def floor_analysis(result: dict, hf_dir: str) -> dict:
  """Our iteration's matmul FLOPs and the time they take at the best f32 matmul rate measured now."""
  import jax
  from bench_sampler import matmul_rate, sampler_flops
  from hpt_jax.models import ModelConfig

  w = result["workload"]
  config = ModelConfig.from_hf_config(json.loads((pathlib.Path(hf_dir) / "config.json").read_text()))
  rows = w["prompts"] * w["rollouts"]
  flops = lambda batch: sampler_flops(config, batch=batch, prompt_len=w["prompt_len"], new_tokens=w["new_tokens"],
                                      real_prompt_tokens=batch * w["prompt_len"], decode_phases=result["decode_phases"])
  # The cache is prefilled once per prompt and repeated per rollout; every row then decodes until the
  # last row stops (an upper bound: new_tokens steps). Attention is counted per row.
  per_row = flops(rows)
  sampling = flops(w["prompts"]).prefill + per_row.decode + per_row.lm_head + per_row.attention
  update = sum(update_flops(config, shape) for shape in result["update_shapes"])  # the last iteration's
  d, f = config.hidden_size, config.intermediate_size
  rates = {f"[{rows},{d}]x[{d},{2 * f}]": matmul_rate(rows, d, 2 * f),
           f"[{rows * (w['prompt_len'] + w['new_tokens']) // 4},{d}]x[{d},{2 * f}]":
               matmul_rate(rows * (w["prompt_len"] + w["new_tokens"]) // 4, d, 2 * f, repeats=5),
           "2048^2": matmul_rate(2048, 2048, 2048, repeats=3)}
  peak = max(rates.values())
  plain = update_flops(config, {"m": -(-rows // w["micro_rows"]), "bm": min(w["micro_rows"], rows),
                                "seq": w["prompt_len"] + w["new_tokens"]})
  return {"sampling_gflop": sampling / 1e9, "update_gflop": update / 1e9, "total_gflop": (sampling + update) / 1e9,
          "plain_rows_update_gflop": plain / 1e9, "update_shapes": result["update_shapes"],
          "rates_gflops": {k: r / 1e9 for k, r in rates.items()}, "peak_gflops": peak / 1e9,
          "floor_seconds": (sampling + update) / peak, "device": jax.devices()[0].device_kind}


def _fmt_split(split: dict) -> str:
  return ", ".join(f"{k} {v:.2f}s" for k, v in split.items())


def report(results: dict) -> None:
  ours, hpt, theirs = results["ours"], results.get("ours_hpt"), results.get("trl")
  w = ours["workload"]
  print(f"workload: {w['prompts']} prompts x {w['rollouts']} rollouts, prompt bucket {w['prompt_len']}, "
        f"{w['new_tokens']} new tokens, {w['micro_rows']}-row micro-batches; load average "
        f"{results['load_before']} (before) / {results['load_after']} (after)")
  print(f"ours ({ours['device']}, grpo rows = trl's workload): warm {ours['warm_seconds']:.2f} s/iter "
        f"{[round(x, 2) for x in ours['warm_all']]} (CPU {ours['warm_cpu_seconds']:.1f} s), first "
        f"{ours['first_seconds']:.1f} s; "
        f"{ours['generated_tokens']:.0f} tokens generated; peak RSS {ours['peak_rss_mib']:.0f} MiB")
  print(f"  split: {_fmt_split(ours['split'])}")
  print(f"  peak RSS after each stage (MiB): {ours['peak_rss_by_stage']}; torch imported: "
        f"{ours.get('torch_imported')}; log-prob chunk: {w.get('logprob_chunk') or 'none (full logits)'}")
  print(f"  compilations: {ours['compiles_first']} in the first iteration, {ours['compiles_after_first']} "
        f"after it {ours['recompiled'] or ''}")
  print(f"  update layout: {'shared prompts' if ours.get('shared_prompts') else 'plain rows'}, batch shapes "
        f"{ours.get('update_shapes')}")
  print(f"  old-log-prob forward passes run: {ours['old_logprob_passes']} (loop configured to recompute: "
        f"{ours['old_logprob_recompute_configured']}); train-step remat: {w.get('remat')}")
  if hpt is not None:
    print(f"ours (hpt gate + HPT loss, {hpt['train_rows']:.0f} rows trained): warm {hpt['warm_seconds']:.2f} "
          f"s/iter, first {hpt['first_seconds']:.1f} s; split: {_fmt_split(hpt['split'])}; compilations "
          f"after the first iteration: {hpt['compiles_after_first']}; peak RSS {hpt['peak_rss_mib']:.0f} MiB")
  cached = results.get("ours_warm_cache")
  if cached is not None:
    print(f"ours with a warm persistent compilation cache: first iteration {cached['first_seconds']:.1f} s, "
          f"warm {cached['warm_seconds']:.2f} s/iter (CPU {cached['warm_cpu_seconds']:.1f} s), peak RSS "
          f"{cached['peak_rss_mib']:.0f} MiB {cached['peak_rss_by_stage']}")
  if theirs is not None:
    print(f"trl {theirs['trl_version']} ({theirs['device']}): warm {theirs['warm_seconds']:.2f} s/iter "
          f"{[round(x, 2) for x in theirs['warm_all']]} (CPU {theirs['warm_cpu_seconds']:.1f} s), first "
          f"{theirs['first_seconds']:.1f} s; "
          f"{theirs['generated_tokens']:.0f} tokens generated; peak RSS {theirs['peak_rss_mib']:.0f} MiB "
          f"(prompt token mismatches: {theirs['prompt_token_mismatches']})")
    print(f"  split: {_fmt_split(theirs['split'])}")
    print(f"separate processes, ours/trl: {theirs['warm_seconds'] / ours['warm_seconds']:.2f}x wall-clock, "
          f"{theirs['warm_cpu_seconds'] / ours['warm_cpu_seconds']:.2f}x in process CPU seconds "
          f"(ours {ours['warm_cpu_seconds']:.1f}, trl {theirs['warm_cpu_seconds']:.1f} per iteration); "
          f"peak memory ours/trl: {ours['peak_rss_mib']:.0f} / {theirs['peak_rss_mib']:.0f} MiB = "
          f"{ours['peak_rss_mib'] / theirs['peak_rss_mib']:.2f}")
  inter = results.get("interleaved")
  if inter is not None:
    o, t = inter["ours"], inter["trl"]
    print(f"interleaved in one process (ours, trl, ours, trl, ...; the same load for both): ours warm "
          f"{o['warm_seconds']:.2f} s/iter {[round(x, 2) for x in o['warm_all']]} (CPU {o['warm_cpu_seconds']:.1f} s; "
          f"split: {_fmt_split(o['split'])}), trl warm {t['warm_seconds']:.2f} s/iter "
          f"{[round(x, 2) for x in t['warm_all']]} (CPU {t['warm_cpu_seconds']:.1f} s; split: {_fmt_split(t['split'])})")
    print(f"speed-up ours/trl (interleaved, median of per-iteration ratios): "
          f"{statistics.median(inter['wall_ratios']):.2f}x wall-clock {[round(x, 2) for x in inter['wall_ratios']]}, "
          f"{statistics.median(inter['cpu_ratios']):.2f}x in process CPU seconds "
          f"{[round(x, 2) for x in inter['cpu_ratios']]}; compilations after our first iteration: "
          f"{o['compiles_after_first']}")
  floor = results.get("floor")
  if floor is not None:
    print(f"floor: our matmul FLOPs per iteration {floor['total_gflop']:.1f} G (sampling "
          f"{floor['sampling_gflop']:.1f}, update {floor['update_gflop']:.1f} over {floor['update_shapes']}; "
          f"plain rows would be {floor['plain_rows_update_gflop']:.1f}); f32 matmul rate now "
          + ", ".join(f"{k} {r:.1f}" for k, r in floor["rates_gflops"].items()) + " GFLOP/s")
    at = ours["warm_seconds"]
    print(f"floor: ours runs at {floor['total_gflop'] / at:.1f} GFLOP/s wall ({floor['total_gflop'] / at / floor['peak_gflops']:.0%} "
          f"of the best rate); at 100 % of {floor['peak_gflops']:.1f} GFLOP/s an iteration takes "
          f"{floor['floor_seconds']:.2f} s")
    for name, side in (("separate", theirs), ("interleaved", inter and inter["trl"])):
      if side:
        print(f"floor: vs trl {name} ({side['warm_seconds']:.2f} s/iter) the best possible ratio with these FLOPs "
              f"is {side['warm_seconds'] / floor['floor_seconds']:.2f}x (measured: "
              f"{side['warm_seconds'] / (inter['ours'] if name == 'interleaved' else ours)['warm_seconds']:.2f}x)")
  for name in ("tokens", "rollouts"):
    rows = results.get(f"scaling_{name}")
    if not rows:
      continue
    print(f"scaling over {name} (wall s/iter; process CPU s/iter is the load-independent figure):")
    for r in rows:
      wl = r["workload"]
      per_k = r["warm_cpu_seconds"] / max(r["generated_tokens"], 1) * 1000
      print(f"  {wl['rollouts']:3d} rollouts x {wl['new_tokens']:4d} new tokens: {r['warm_seconds']:7.2f} s/iter, "
            f"CPU {r['warm_cpu_seconds']:7.2f} s/iter, {r['generated_tokens']:7.0f} tokens generated, "
            f"{per_k:6.3f} CPU s per 1k tokens; sampling {r['split']['sampling']:.2f} s, update "
            f"{r['split']['update']:.2f} s; compilations after the first iteration: {r['compiles_after_first']}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--smoke", action="store_true", help="minuscule model and workload (CI)")
  parser.add_argument("--iters", type=int, default=4, help="iterations per measurement (first = compile)")
  parser.add_argument("--no-trl", action="store_true")
  parser.add_argument("--no-hpt", action="store_true", help="skip the HPT-gate row")
  parser.add_argument("--no-scaling", action="store_true")
  parser.add_argument("--only-scaling", action="store_true", help="just the scaling sweep (no trl, no hpt)")
  parser.add_argument("--scaling-iters", type=int, default=3, help="iterations per scaling point")
  parser.add_argument("--warm-cache", action="store_true",
                      help="also run ours with a warm persistent compilation cache (a resumed run's start)")
  parser.add_argument("--cpu-devices", type=int, default=1,
                      help="ours: XLA host devices (mesh.data); 2 uses both cores of a 2-core machine")
  parser.add_argument("--logprob-chunk", type=int, default=0,
                      help="ours: log-prob chunk of the train step (0 = full logits, right for a 512 vocab)")
  parser.add_argument("--remat", default="save_dots", choices=("none", "save_dots", "full"),
                      help="ours: the train step's remat policy (save_dots: the main job's default)")
  parser.add_argument("--torch-threads", type=int, default=0, help="trl: torch threads (0 = torch's default)")
  parser.add_argument("--plain-rows", action="store_true",
                      help="ours: plain prompt ++ response rows in the update (default: each distinct prompt "
                      "once per micro-batch, the loop's batch.shared_prompts)")
  parser.add_argument("--new-tokens", type=int, default=64,
                      help="the base workload's response length (the issue's is 64; the scaling sweep is fixed)")
  parser.add_argument("--response-granules", type=int, default=0,
                      help="ours: batch.response_granules (the update's per-token work on real response "
                      "tokens, in k/g of a micro-batch's slots; 0 = every slot)")
  parser.add_argument("--no-separate-trl", action="store_true",
                      help="trl only interleaved with ours (no run of its own, so no trl peak RSS)")
  parser.add_argument("--json", type=pathlib.Path, help="also write all results here")
  parser.add_argument("--worker", help=argparse.SUPPRESS)  # JSON list of jobs
  parser.add_argument("--paths", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    _worker_main(args.worker, args.paths)
    return

  if args.smoke:
    # Every part runs (ours, trl, a second scaling point) on a minuscule model and workload; the
    # time goes to interpreter starts, imports and compilation, not to the workload.
    base = Workload(prompts=2, rollouts=2, prompt_len=32, new_tokens=4, micro_rows=2, iters=2,
                    cpu_devices=args.cpu_devices, logprob_chunk=args.logprob_chunk,
                    shared_prompts=not args.plain_rows)
    size, timeout = SMOKE_MODEL, 600
    token_sweep, rollout_sweep = (4,), ()  # the base point only: another would compile everything again
    args.no_hpt = True  # the gate path is covered by the loop's tests; keep CI short
    # Compilation is most of the smoke run's time, and its programs' speed does not matter.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
                               " --xla_llvm_disable_expensive_passes=true").strip()
  else:
    base = Workload(iters=args.iters, cpu_devices=args.cpu_devices, logprob_chunk=args.logprob_chunk,
                    torch_threads=args.torch_threads, remat=args.remat, shared_prompts=not args.plain_rows,
                    response_granules=args.response_granules, new_tokens=args.new_tokens)
    size, timeout = ModelSize(), 1800
    token_sweep, rollout_sweep = (64, 128, 256, 512), (4, 8, 16)
  root = pathlib.Path(tempfile.mkdtemp(prefix="bench_iteration_"))
  t = time.perf_counter()
  paths = prepare(root, size)
  print(f"prepared the task and model in {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
  results = {"load_before": round(os.getloadavg()[0], 1)}
  if args.only_scaling:
    args.no_trl = args.no_hpt = True
  # The scaling points run in the base measurement's process, after it: the base's peak RSS is
  # taken before they start, and they share its interpreter start, imports and reward pool.
  todo = []
  if not args.no_scaling:
    short = dataclasses.replace(base, iters=min(base.iters, args.scaling_iters))
    points = {("tokens", t): dataclasses.replace(short, new_tokens=t) for t in token_sweep}
    points |= {("rollouts", n): dataclasses.replace(short, rollouts=n) for n in rollout_sweep}
    todo = sorted({w for w in points.values() if w != base}, key=lambda w: (w.rows * w.new_tokens, w.rows))
  jobs: list[Job] = [("ours", base)]
  if args.smoke and not args.no_trl:
    # One process for everything: the interleaved run reuses the programs the first run compiled.
    # (Its trl side shares the process, so the smoke run has no separate trl peak RSS.)
    jobs.append(("interleaved", base))
  first, *rest = run_workers(jobs + [("ours", w) for w in todo], paths, timeout=timeout)
  results["ours"] = first
  if args.smoke and not args.no_trl:
    results["interleaved"], *rest = rest
  if not args.no_scaling:
    done = dict(zip(todo, rest)) | {base: first}
    results["scaling_tokens"] = [done[points["tokens", t]] for t in token_sweep]
    results["scaling_rollouts"] = [done[points["rollouts", n]] for n in rollout_sweep]
  if not args.no_hpt:
    results["ours_hpt"] = run_worker("ours", dataclasses.replace(base, algorithm="hpt"), paths, timeout=timeout)
  if not args.no_trl and not args.smoke:
    if not args.no_separate_trl:
      results["trl"] = run_worker("trl", base, paths, timeout=timeout)  # its own process: its peak RSS
    results["interleaved"] = run_worker("interleaved", base, paths, timeout=2 * timeout)
  if args.warm_cache:
    cached = paths | {"compilation_cache": str(root / "jax_cache")}
    run_worker("ours", dataclasses.replace(base, iters=1), cached, timeout=timeout)  # fills the cache
    results["ours_warm_cache"] = run_worker("ours", base, cached, timeout=timeout)
  results["floor"] = floor_analysis(results["ours"], paths["hf_dir"])
  results["load_after"] = round(os.getloadavg()[0], 1)
  report(results)
  if args.json:
    args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
  main()
