"""The training loop: rollouts → rewards → gate → rows → mini-batch updates → metrics → checkpoints.

One training step (PAPER.md §2.3):
  1. the data sampler yields `batch.prompts_per_step` questions;
  2. `rollout_phase.collect` samples n rollouts each, scores them in the reward pool, routes each
     question through the phase's row source (HPT's gate, all rollouts, all demonstrations, or
     both) and returns the rows;
  3. Â is computed over all the step's rows (the phase's estimator), then the rows are cut into
     mini-batches of `batch.rows_per_optimizer_step` (the paper: 2 optimizer steps per 1,024 rows),
     each packed into static [M, Bm, L] micro-batches (by default in the shared-prompt layout: each
     distinct prompt of the batch once; `pack_config`) and given to the jitted train step. The first
     mini-batch is exactly on-policy, so its π_old is stop_gradient(π_θ); later ones use the log-probs
     the sampler recorded with the step's starting parameters (no extra forward pass) while the
     sampling policy is the training policy, and a teacher-forced recompute with those parameters
     otherwise (`old_logprobs.py`; a phase's `old_logprobs` field);
  4. metrics are written (JSONL, TensorBoard, progress bar, a log line), validation runs every
     `validation.every_steps`, a checkpoint every `checkpoint.every_steps` and after the last step.

The last step is the last phase's, or, with `training_token_budget`, the first step at which the
training tokens (`train/tokens`: real tokens of the rows updated on, summed in `train/tokens_total`,
which the checkpoint keeps for a resume) reach the budget.

Exact resume: all randomness is indexed by the step (the sampler's seed is a hash of (seed, step)
and the data sampler's position is checkpointed), so restarting from a checkpoint reproduces the
uninterrupted run. SFT→GRPO is two `Phase`s of the same loop.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import time
from typing import Any

from absl import logging
import jax
import numpy as np
from flax import nnx

from hpt_jax import hybrid
from hpt_jax import sampling
from hpt_jax.hybrid.objective import AdvantageEstimator, compute_advantages
from hpt_jax.sampling.lm import CausalLMDecoder
from hpt_jax.training import distributed
from hpt_jax.training import host_memory
from hpt_jax.training import rollout_phase
from hpt_jax.training import batching
from hpt_jax.training.batching import MicroBatches, PackConfig, Rows, SharedPrompts, pack
from hpt_jax.training.checkpoint import BestTracker, Checkpointer
from hpt_jax.training.config import GroupFilter, Phase, RowSource, TrainConfig, validate
from hpt_jax.training import mesh as mesh_lib
from hpt_jax.training.data_source import TrainingData
from hpt_jax.training.metrics import MetricsWriter
from hpt_jax.training.old_logprobs import Recompute, should_recompute
from hpt_jax.training.optimizer import make_optimizer
from hpt_jax.training.overrides import ConfigError
from hpt_jax.training.progress import Progress
from hpt_jax.training.optimizer import OptimConfig
from hpt_jax.training.state import (TrainState, abstract_params, create_train_state, model_graphdef,
                                    state_shardings)
from hpt_jax.training.train_step import TrainStep
from hpt_jax.training.validation import Validator


@dataclasses.dataclass(frozen=True)
class RunSummary:
  """What a `train` call did: steps completed (in total), where outputs are, last metrics."""
  steps: int
  outputs: dict[str, pathlib.Path]
  last_metrics: dict[str, float]


def step_seed(seed: int, step: int) -> int:
  """The sampling seed of training step `step`: a hash of (seed, step), the same on every host."""
  return int(np.random.SeedSequence([seed, step]).generate_state(1)[0] & 0x7FFFFFFF)


def take_rows(rows: Rows, lo: int, hi: int, *, keep_old_logp: bool) -> Rows:
  """Rows [lo, hi) of `rows`; without old log-probs when the policy has not moved yet."""
  sl = slice(lo, hi)
  return Rows(
      prompts=list(rows.prompts[sl]), responses=list(rows.responses[sl]),
      old_logp=list(rows.old_logp[sl]) if keep_old_logp and rows.old_logp is not None else None,
      is_demo=rows.is_demo[sl], group_ids=rows.group_ids[sl], question_index=rows.question_index[sl],
      rewards=rows.rewards[sl], rl_weight=rows.rl_weight[sl], sft_weight=rows.sft_weight[sl])


# One compiled program per row count; run eagerly, the estimator's ~20 jnp ops each compiled a program
# of their own in the first step (2.2 s of host time in experiments/bench_iteration.py) and again for
# every new row count (the HPT gate's steps vary in rows).
_compute_advantages = jax.jit(compute_advantages, static_argnums=0)


def step_advantages(estimator: AdvantageEstimator, rows: Rows) -> np.ndarray:
  """[B] Â over all of a step's rows (before the mini-batch split, as the official code does)."""
  if estimator is AdvantageEstimator.GIVEN:
    raise ConfigError("phases.N.loss.advantage: 'given' needs advantages from outside the loop; use "
                      "grpo or dr_grpo")
  _, dense = np.unique(np.asarray(rows.group_ids), return_inverse=True)
  adv = _compute_advantages(estimator, given=np.zeros(rows.num_rows, np.float32),
                            rewards=np.asarray(rows.rewards, np.float32), group_ids=dense.astype(np.int32),
                            row_valid=np.ones(rows.num_rows, bool))
  return np.asarray(adv, np.float64)


def pack_config(config: TrainConfig, phase: Phase, *, pad_id: int) -> PackConfig:
  """The layout of `phase`'s mini-batches.

  Plain `prompt ++ response` rows in a length bucket (p + r for the sampling buckets), or, with
  `batch.shared_prompts`, the shared-prompt layout (`batching` module docstring: each distinct prompt
  of the batch once, in M·Gp prefix slots of a prompt bucket; the responses in a response bucket).
  A phase of demonstrations only has one row per question, so nothing to share: it keeps plain rows.
  """
  sampling, batch = config.sampling, config.batch
  lengths = sorted({p + r for p in sampling.prompt_buckets for r in sampling.response_buckets})
  bm = batch.rows_per_micro_batch
  shared = None
  if batch.shared_prompts and phase.rows is not RowSource.DEMOS:
    # Gp (the batch's distinct prompts over M, rounded up) is a static shape: each distinct value
    # compiles the train step (and the π_old recompute) once more. Slots come in units of
    # ceil(Bm / n), a micro-batch's worth of whole rollout groups' prompts, so a pure RL phase (whole
    # groups, Bm a multiple of n) has exactly one Gp and pads no prefix slot. Batches that mix RL
    # groups with one-row demonstrations hold anything from Bm / n to Bm prompts per micro-batch,
    # varying step to step: there the unit is at least Bm / 4, so at most 4 values of Gp (4 compiles)
    # per bucket pair, for a few padded prefix slots. Prefix rows are sharded like batch rows, so the
    # unit is rounded up to a multiple of the mesh's batch shards.
    unit = -(-bm // sampling.rollouts_per_prompt)
    if phase.rows is not RowSource.ROLLOUTS:
      unit = max(unit, -(-bm // 4))
    shards = config.mesh.batch_shards
    shared = SharedPrompts(prompt_buckets=tuple(sampling.prompt_buckets),
                           response_buckets=tuple(sampling.response_buckets),
                           prefix_slot_multiple=-(-unit // shards) * shards)
  return PackConfig(length_buckets=tuple(lengths), rows_per_micro_batch=bm,
                    micro_batch_multiple=batch.rows_per_optimizer_step // bm, pad_id=pad_id,
                    shared_prompts=shared)


def _scalar(x: Any) -> float:
  # Step metrics are replicated scalars; reading one local shard works on every host.
  if isinstance(x, jax.Array):
    return float(np.asarray(x.addressable_data(0)))
  return float(x)


def _mean_metrics(items: list[dict[str, float]]) -> dict[str, float]:
  keys = items[0].keys()
  return {k: float(np.mean([m[k] for m in items])) for k in keys}


@functools.lru_cache(maxsize=16)
def _recompute(model_config, temperature: float, logprob_chunk: int | None, mesh,
               response_granules: int = 0) -> Recompute:
  """One π_old recompute pass per (model, temperature, chunk, mesh, packing) in a process (see
  `_train_step`)."""
  return Recompute(model_config, temperature=temperature, logprob_chunk=logprob_chunk, mesh=mesh,
                   response_granules=response_granules)


@functools.lru_cache(maxsize=16)
def _train_step(model_config, loss, optim: OptimConfig, mesh, response_granules: int = 0) -> TrainStep:
  """One TrainStep per (model, loss, optimizer, mesh, packing) in a process, so that its compiled
  programs are reused by later `train` calls (a resume in the same process, tests, sweeps)."""
  return TrainStep(model_config, loss=loss, optimizer=make_optimizer(optim), mesh=mesh,
                   response_granules=response_granules)


class _Run:
  """The objects of one run, built once (model, data, sampler, steps, writers)."""

  def __init__(self, config: TrainConfig, workdir: pathlib.Path, data: TrainingData | None):
    self.config = config
    self.workdir = workdir
    # Each big XLA compilation gives its freed heap back to the OS before its program first runs
    # (host_memory: otherwise the peak RSS is compile leftovers + the train step's temp buffer).
    host_memory.trim_after_compiles()
    if jax.process_count() > 1 and config.mesh.size != jax.device_count():
      raise ConfigError(f"mesh: a multi-process run must use every device; data × fsdp × tensor = "
                        f"{config.mesh.size}, devices = {jax.device_count()}")
    self.model_config = validate(config, num_devices=jax.device_count())
    self.mesh = config.mesh.build()
    if data is None:
      from hpt_jax.training.data_source import load_training_data  # the data package's loaders
      data = load_training_data(config, workdir)
    self.data = data
    if len(data.tokenizer) > self.model_config.vocab_size:
      raise ConfigError(f"model.config.vocab_size={self.model_config.vocab_size} is smaller than the "
                        f"tokenizer's {len(data.tokenizer)} tokens")
    self.gate = hybrid.make_gate(config.gate.build(), num_questions=self.data.num_questions,
                                 drop_demo_questions=config.gate.drop_demo_questions)
    self.graphdef = model_graphdef(self.model_config)
    batch_sharding = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
    sampling_model = config.sampling.model_config(self.model_config)
    self.sampler = sampling.Sampler(
        CausalLMDecoder(model_graphdef(sampling_model), sampling_model), eos_ids=self.data.eos_ids,
        pad_id=self.data.pad_id,
        buckets=sampling.Buckets(prompt=config.sampling.prompt_buckets,
                                 response=config.sampling.response_buckets),
        batch_multiple=config.mesh.batch_shards, batch_sharding=batch_sharding,
        tokenizer=self.data.tokenizer)
    self.strategy = sampling.make_strategy(temperature=config.sampling.temperature,
                                           top_k=config.sampling.top_k, top_p=config.sampling.top_p)
    # Per phase: the mini-batches' layout (shared prompts, or plain rows; see `pack_config`).
    self.pack_configs = [pack_config(config, p, pad_id=self.data.pad_id) for p in config.phases]
    # One compiled step per phase; the loop hands it advantages computed over the whole step.
    self.steps = [_train_step(self.model_config,
                              dataclasses.replace(p.loss, advantage=AdvantageEstimator.GIVEN),
                              config.optim, self.mesh, config.batch.response_granules) for p in config.phases]
    self.optimizer = self.steps[0].optimizer
    # Per phase: the π_old recompute pass, or None where the sampler's log-probs are π_old.
    self.recompute = [
        _recompute(self.model_config, p.loss.temperature, p.loss.logprob_chunk, self.mesh,
                   config.batch.response_granules)
        if p.rows is not RowSource.DEMOS and should_recompute(p.old_logprobs, p.policies(
            self.model_config, config.sampling)) else None
        for p in config.phases]
    self.checkpointer = Checkpointer(workdir / "checkpoints", config=config.checkpoint)
    self.writer = MetricsWriter(workdir, config=config.logging, is_writer=distributed.is_main_process())
    self.validator = Validator(config=config.validation, data=self.data, sampler=self.sampler,
                               max_new_tokens=config.data.max_response_length, seed=config.seed)

  def batch_shardings(self, batch: MicroBatches) -> MicroBatches:
    """Shardings of `batch`'s fields (its layout's: the shared-prompt one has prefix fields)."""
    return mesh_lib.batch_shardings(batch, self.mesh)

  def sampler_params(self, state: TrainState) -> nnx.State:
    # The sampler reads the trainer's own (sharded) arrays: no copy, no gather.
    return nnx.State(state.params)

  def initial_state(self) -> TrainState:
    params = None
    if self.config.model.hf_dir is not None:
      from hpt_jax.models import hf_io  # deferred: only HF starts need it
      overrides = {k: v for k, v in (("rope_theta", self.config.model.rope_theta),
                                     ("max_position_embeddings", self.config.model.max_position_embeddings))
                   if v is not None}
      model = hf_io.load_pretrained(self.config.model.hf_dir, mesh=self.mesh, **overrides)
      params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    # `step` and `rng` come back replicated over the mesh, as the train step returns them.
    return create_train_state(self.model_config, self.optimizer, seed=self.config.seed, mesh=self.mesh,
                              params=params, gate_state=self.gate.init())

  def abstract_state(self) -> TrainState:
    """The state's shapes and target shardings: a checkpoint restores straight onto the mesh."""
    p_shard, o_shard = state_shardings(self.optimizer, self.model_config, self.mesh)
    _, pure = abstract_params(self.model_config)
    place = lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)
    rep = mesh_lib.replicated(self.mesh)
    rng = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0)))
    return TrainState(
        step=jax.ShapeDtypeStruct((), np.int32, sharding=rep),
        params=jax.tree.map(place, pure, p_shard),
        opt_state=jax.tree.map(place, jax.eval_shape(self.optimizer.init, pure), o_shard),
        gate_state=self.gate.init(), rng=jax.ShapeDtypeStruct(rng.shape, rng.dtype, sharding=rep))

  def host_state(self, step: int, best: BestTracker, tokens: int) -> dict:
    return {"step": step, "data": self.data.state_dict(), "best": best.as_dict(),
            "seed": self.config.seed, "training_tokens": tokens}

  def checkpoint(self, step: int, state: TrainState, best: BestTracker, score: float | None,
                 tokens: int) -> None:
    self.checkpointer.save(step, state=state, host=self.host_state(step, best, tokens), score=score)

  def export(self, state: TrainState, name: str) -> pathlib.Path:
    """Writes an HF directory (every process joins the gathers; process 0 writes)."""
    from hpt_jax.models import hf_io  # deferred: only exports need transformers
    path = self.workdir / name
    model = nnx.merge(self.graphdef, nnx.State(state.params))
    hf_io.save_pretrained(model, path, tokenizer_dir=self.data.tokenizer_dir)
    return path

  def dynamic_sampling(self, phase) -> rollout_phase.DynamicSampling | None:
    """DAPO's group filter for a pure RL phase (refills draw the next questions in data order)."""
    sampling_config = self.config.sampling
    if sampling_config.group_filter is GroupFilter.OFF or phase.rows is not RowSource.ROLLOUTS:
      return None
    return rollout_phase.DynamicSampling(group_filter=sampling_config.group_filter,
                                         max_tries=sampling_config.max_sampling_tries,
                                         next_questions=self.data.next_batch)

  def update_batches(self, state: TrainState, rows: Rows, advantages: np.ndarray,
                     phase_index: int) -> tuple[list[MicroBatches], int, int]:
    """The step's mini-batches, packed and placed on the mesh, with their π_old.

    Built before the first update: a recomputed π_old must come from the step's starting
    parameters. The first mini-batch stays on-policy (π_old = stop_gradient(π_θ) in the step).

    Returns:
      (mini-batches, attended tokens, number of mini-batches whose π_old was recomputed).
    """
    size = self.config.batch.rows_per_optimizer_step
    recompute = self.recompute[phase_index]
    batches, tokens, recomputed = [], 0, 0
    for k, lo in enumerate(range(0, rows.num_rows, size)):
      hi = min(lo + size, rows.num_rows)
      host_batch = pack(take_rows(rows, lo, hi, keep_old_logp=k > 0), config=self.pack_configs[phase_index],
                        advantages=advantages[lo:hi])
      # Prompt + response tokens of the real rows: in the shared layout the per-row mask covers the
      # responses only, each prompt being stored once per micro-batch.
      tokens += int(batching.real_tokens(host_batch))
      batch = distributed.global_tree(host_batch, self.batch_shardings(host_batch))
      if k > 0 and recompute is not None and rows.old_logp is not None:
        batch = recompute(state.params, batch)
        recomputed += 1
      batches.append(batch)
    if recomputed:
      # The first update donates the parameters these passes read: let them finish first.
      jax.block_until_ready(batches)
    return batches, tokens, recomputed

  def one_step(self, state: TrainState, step: int) -> tuple[TrainState, dict[str, float]]:
    config = self.config
    phase_index, phase = config.phase_at(step)
    start = time.perf_counter()
    questions = self.data.next_batch()
    distributed.assert_same_on_all_hosts(np.asarray([q.index for q in questions]), name="questions")
    with jax.set_mesh(self.mesh):
      experience = rollout_phase.collect(
          params=self.sampler_params(state), questions=questions, source=phase.rows,
          sampler=self.sampler, strategy=self.strategy,
          num_samples=config.sampling.rollouts_per_prompt,
          max_new_tokens=config.data.max_response_length, seed=step_seed(config.seed, step),
          score_fn=self.data.score, gate=self.gate, gate_state=state.gate_state,
          dynamic=self.dynamic_sampling(phase))
    state = state._replace(gate_state=experience.gate_state)
    rows = experience.rows
    advantages = step_advantages(phase.loss.advantage, rows)
    train_step = self.steps[phase_index]
    per_update = []
    train_start = time.perf_counter()
    batches, train_tokens, recomputed = self.update_batches(state, rows, advantages, phase_index)
    for batch in batches:
      state, metrics = train_step(state, batch)
      per_update.append({k2: _scalar(v) for k2, v in metrics.items()})
    jax.block_until_ready(state.params)
    train_seconds = time.perf_counter() - train_start
    out = dict(experience.metrics)
    out |= {f"train/{k.replace('/', '_')}": v for k, v in _mean_metrics(per_update).items()}
    out["train/loss"] = out.get("train/loss_total", float("nan"))
    out["train/grad_norm"] = out.get("train/optim_grad_norm", float("nan"))
    out["train/entropy"] = out.get("train/policy_entropy", float("nan"))  # token-mean H of the responses
    out["train/skipped_updates"] = per_update[-1].get("optim/num_skipped", 0.0)
    out["train/optimizer_steps"] = float(len(per_update))
    out["train/recomputed_old_logp_batches"] = float(recomputed)
    out["train/phase"] = float(phase_index)
    out["train/tokens"] = float(train_tokens)  # what training_token_budget counts
    out["perf/training_seconds"] = train_seconds
    out["perf/training_tokens_per_s"] = train_tokens / max(train_seconds, 1e-9)
    out["perf/step_seconds"] = time.perf_counter() - start
    return state, out


def train(config: TrainConfig, *, workdir: str | pathlib.Path, data: TrainingData | None = None,
          stop_after_steps: int | None = None) -> RunSummary:
  """Runs (or resumes) `config` in `workdir`.

  Args:
    config: the run.
    workdir: output directory; a checkpoint there is resumed from.
    data: the training data; None loads what `config.data` names (a file or the built-in task).
    stop_after_steps: end this call after that many steps (a later call resumes); None runs to
      the end of the last phase.

  Returns:
    `RunSummary`.
  """
  workdir = pathlib.Path(workdir).absolute()
  run = _Run(config, workdir, data)
  best = BestTracker(mode=config.checkpoint.best_mode)
  start = 0
  tokens = 0  # training tokens so far (train/tokens_total)
  if run.checkpointer.latest_step() is None:
    state = run.initial_state()
  else:
    state, host = run.checkpointer.restore(like=run.abstract_state())
    start = int(host["step"])
    tokens = int(host.get("training_tokens", 0))  # 0 for checkpoints written before the budget existed
    run.data.load_state_dict(host["data"])
    best = BestTracker.from_dict(config.checkpoint.best_mode, host["best"])
    logging.info("resumed from step %d in %s", start, run.checkpointer.directory)
  # Records past the restored step (or all of them, for a fresh start) were written by a run that
  # did not reach its next checkpoint; they are rewritten identically below.
  run.writer.truncate_after(start if start > 0 else -1)
  total = config.total_steps
  end = total if stop_after_steps is None else min(total, start + stop_after_steps)
  budget = config.training_token_budget
  spent = lambda: budget is not None and tokens >= budget  # the run's last step is done
  if spent():  # resumed from the checkpoint of the step that reached the budget
    total = end = start
  progress = Progress(start=start, total=total, enabled=config.logging.progress_bar and
                      distributed.is_main_process(), log_summary=distributed.is_main_process(),
                      summary_every=config.logging.summary_every)
  outputs = {"workdir": workdir, "metrics": run.writer.jsonl_path, "checkpoints": run.checkpointer.directory}
  metrics: dict[str, float] = {}
  try:
    if start == 0 and config.validation.before_training and config.validation.every_steps:
      run.writer.write(0, run.validator(run.sampler_params(state), step=0))
    for step in range(start, end):
      state, metrics = run.one_step(state, step)
      done = step + 1
      tokens += int(metrics["train/tokens"])
      metrics["train/tokens_total"] = float(tokens)
      if spent():  # the budget ends the run here: this step is the last one
        total = end = done
      score = None
      if config.validation.every_steps and (done % config.validation.every_steps == 0 or done == total):
        val = run.validator(run.sampler_params(state), step=done)
        metrics |= val
        score = val.get(config.checkpoint.best_metric)
      run.writer.write(done, metrics)
      progress.update(done, metrics)
      if score is not None and best.update(done, score) and config.checkpoint.export_hf:
        outputs["hf_best"] = run.export(state, "hf_best")
      if done % config.checkpoint.every_steps == 0 or done == end:
        run.checkpoint(done, state, best, score, tokens)
      if done == end:
        break
    if end == total and config.checkpoint.export_hf:
      outputs["hf_final"] = run.export(state, "hf_final")
  finally:
    progress.close()
    run.writer.close()
    run.checkpointer.close()
    run.data.close()
  if config.logging.tensorboard:
    outputs["tensorboard"] = workdir / "tensorboard"
  return RunSummary(steps=end, outputs=outputs, last_metrics=metrics)
