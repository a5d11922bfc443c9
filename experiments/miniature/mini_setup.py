"""The miniature Table 2: what is trained, with which settings (configs only; run.py runs them).

Task: the built-in column-addition task (hpt_jax.data.arithmetic), level L = two L-digit operands.
  1. Base model: the tiny Qwen2 (presets.tiny, ~3M parameters) pretrained briefly by SFT on levels 1-2
     only, so that, like Qwen2.5-Math base, it solves the easy questions some of the time and never
     the hard ones (level 3 has one more column than it has ever seen).
  2. Post-training on levels 1-3 with the demonstrations, every method at the same budget of rows:
     each step offers P questions × n = 8 rows (GRPO: 8 rollouts; LUFFY: 7 rollouts + the
     demonstration; SFT: P·8 demonstrations; HPT: 8 rollouts, or 1 demonstration where the gate
     sends the question to SFT — so HPT trains on at most the others' tokens, never more);
     SFT→GRPO spends half the steps on each stage. The trained-token totals are measured and
     reported next to the scores.
  3. Held-out evaluation: `eval_per_level` problems per level that no run trains on, `eval_samples`
     samples each at temperature 0.6 / top-p 0.95 (the paper's protocol), avg@k and pass@k.

All methods share one learning rate (not tuned per method; the paper's 5e-6 vs 1e-6 for LUFFY is a
statement about 7B models and does not transfer to a 3M model trained for a few dozen steps).
"""

from __future__ import annotations

import dataclasses
import enum
import pathlib

from hpt_jax.hybrid.objective import AdvantageEstimator, LossConfig, LossMode
from hpt_jax.models import presets
from hpt_jax.training import config as c
from hpt_jax.training.optimizer import OptimConfig, Schedule
from hpt_jax.upge import algorithms


@dataclasses.dataclass(frozen=True, kw_only=True)
class Spec:
  """Sizes of the miniature (the defaults are the full run; run.py's --reduced shrinks them).

  Why each value (chosen before the full run; none was tuned toward any method's score; RESULTS.md
  repeats this list):
  - lr: warm-up (10 %) + cosine decay to 5 % for pretraining and for every post-training run, as the
    default run (experiments/configs/builtin_tiny.py), where a constant lr let the unclipped RL branch
    undo the warm-up. Post-training peak 1e-4, the same for every method. CHANGED AFTER SEEING
    RESULTS: the first choice, 3e-4, was run for seed 0 of HPT and GRPO (a pilot, in RESULTS.md):
    both lost most of the base's accuracy (GRPO's rollout accuracy fell from 47 % to 0 %), the
    constant-lr collapse again. 1e-4 peak puts the schedule's mean (~5e-5) where the default run's
    RL phase acted and improved (the tail of its cosine). Lowered for all methods alike.
  - 32 steps of P = 4 questions × n = 8 rows, one optimizer update per step: 4x the reduced run's 8
    updates, every update on-policy (the importance ratio is exactly 1, so the official loss's
    unclipped ratio never acts), and one update per step makes every method's lr schedule the same
    function of the step. P = 4 rather than 8 is the price of fitting 21 runs into 60 minutes on 2
    cores (measured: ~5 CPU-s per 64-row step).
  - evaluation: every held-out problem level 1 allows (50 of its 100; the other 50 are trained on),
    and 150 for levels 2-3 (eval_extra more, drawn distinct and absent from every training file):
    a per-level standard error of ~4 points per seed instead of ~8 at 32 problems.
  """
  pretrain_levels: tuple[int, ...] = (1, 2)
  post_levels: tuple[int, ...] = (1, 2, 3)
  pretrain_steps: int = 100
  pretrain_prompts: int = 64
  pretrain_lr: float = 2e-3
  steps: int = 32
  prompts: int = 4  # P questions per step
  rollouts: int = 8  # n
  lr: float = 1e-4  # peak of the warm-up + cosine schedule (all post-training runs; 3e-4 collapsed RL)
  rows_per_update: int = 32  # P·n = 32 rows: one on-policy update per step
  warmup_fraction: float = 0.1
  final_lr_ratio: float = 0.05
  response_len: int = 40  # a level-3 demonstration is <= 36 tokens + EOS
  prompt_len: int = 32
  eval_per_level: int = 50  # the task's held-out problems per level (level 1 has only 100 in all)
  eval_extra: int = 100  # more held-out problems for each level >= 2 (absent from every training file)
  eval_samples: int = 4
  seeds: tuple[int, ...] = (0, 1, 2)
  gammas: tuple[int, ...] = (0, 1, 2)  # γ·n for the Table 6 ablation (0, 1/8, 2/8)
  methods: tuple["Method", ...] | None = None  # None: all five (the smoke test runs fewer)
  # Constant lr (the REDUCED run's setting, kept to reproduce it); False: warm-up + cosine.
  constant_lr: bool = False


class Method(enum.Enum):
  SFT = "SFT"
  GRPO = "GRPO"
  SFT_GRPO = "SFT→GRPO"
  LUFFY = "LUFFY"
  HPT = "HPT"


@dataclasses.dataclass(frozen=True)
class RunKey:
  """One post-training run: a method, a seed, and (HPT only) the gate's γ·n."""
  method: Method
  seed: int
  gamma: int = 0

  @property
  def name(self) -> str:
    base = {Method.SFT_GRPO: "sft_grpo"}.get(self.method, self.method.value.lower())
    return f"{base}_g{self.gamma}_s{self.seed}" if self.method is Method.HPT else f"{base}_s{self.seed}"


def _model(spec: Spec):
  return presets.tiny(max_position_embeddings=2 * (spec.prompt_len + spec.response_len))


def _optim(spec: Spec, *, lr: float, updates: int) -> OptimConfig:
  """AdamW at `lr`: warm-up + cosine over `updates` optimizer updates (or constant, spec.constant_lr)."""
  if spec.constant_lr:
    return OptimConfig(learning_rate=lr, weight_decay=0.0, skip_above_norm=None)
  warmup = max(1, round(spec.warmup_fraction * updates))
  return OptimConfig(learning_rate=lr, weight_decay=0.0, skip_above_norm=None, schedule=Schedule.WARMUP_COSINE,
                     warmup_steps=warmup, total_steps=max(updates, warmup + 1),
                     final_lr_ratio=spec.final_lr_ratio)


def _base(spec: Spec, *, levels: tuple[int, ...], task_dir: pathlib.Path, seed: int,
          prompts: int, rollouts: int, lr: float, phases: tuple[c.Phase, ...],
          model: c.ModelSource, gamma: int = 0, validate_every: int = 0) -> c.TrainConfig:
  # validation.num_problems is also the held-out count per level of the built-in task (the data
  # source ties them), so it is eval_per_level in every run: pretraining and post-training then
  # hold out the same problems and no run trains on an evaluation question.
  # The schedule spans the updates a full step makes (P·n rows / rows_per_update each); HPT's steps
  # with SFT questions carry fewer rows, so its lr decays a little less far by the end.
  rows_per_step = prompts * rollouts
  updates = sum(ph.steps for ph in phases) * -(-rows_per_step // spec.rows_per_update)
  return c.TrainConfig(
      model=model,
      data=c.DataConfig(builtin_problems=2000 * len(levels), builtin_levels=levels, builtin_seed=0,
                        builtin_dir=task_dir, max_prompt_length=spec.prompt_len,
                        max_response_length=spec.response_len, shuffle_seed=47 + seed, reward_workers=1),
      sampling=c.SamplingConfig(rollouts_per_prompt=rollouts, prompt_buckets=(spec.prompt_len,),
                                response_buckets=(spec.response_len,)),
      gate=c.GateConfig(gamma_count=gamma),
      batch=c.BatchConfig(prompts_per_step=prompts, rows_per_optimizer_step=spec.rows_per_update,
                          rows_per_micro_batch=spec.rows_per_update),
      optim=_optim(spec, lr=lr, updates=updates),
      phases=phases,
      validation=c.ValidationConfig(every_steps=validate_every, before_training=False,
                                    num_problems=spec.eval_per_level, samples_per_problem=1),
      checkpoint=c.CheckpointConfig(every_steps=10_000, keep_last=1, keep_best=1, async_save=False),
      logging=dataclasses.replace(c.TrainConfig().logging, tensorboard=False, progress_bar=False),
      seed=seed)


def pretrain_config(spec: Spec, *, task_dir: pathlib.Path) -> c.TrainConfig:
  """SFT from random weights on the easy levels only."""
  loss, rows = c.baseline("sft", width=spec.response_len)
  return _base(spec, levels=spec.pretrain_levels, task_dir=task_dir, seed=0, prompts=spec.pretrain_prompts,
               rollouts=1, lr=spec.pretrain_lr, phases=(c.Phase(loss=loss, rows=rows, steps=spec.pretrain_steps),),
               model=c.ModelSource(config=_model(spec)))


def _grpo(width: int) -> LossConfig:
  # As experiments/paper: the official framework without demonstrations (Dr.GRPO, no clip, Σ/T).
  return LossConfig(algorithm=algorithms.HptRl(width=width), sft=False, mode=LossMode.OFFICIAL,
                    advantage=AdvantageEstimator.DR_GRPO, entropy_coeff=0.001, rl_width=width)


def post_configs(spec: Spec, key: RunKey, *, base_dir: pathlib.Path, task_dir: pathlib.Path,
                 stage_dir: pathlib.Path | None = None) -> list[c.TrainConfig]:
  """The config(s) of one post-training run starting from the HF export `base_dir`.

  SFT→GRPO returns two configs: the SFT stage, and the GRPO stage starting from `stage_dir` (the
  SFT stage's export).
  """
  model = c.ModelSource(config=_model(spec), hf_dir=base_dir, tokenizer_dir=base_dir)
  w, p, n, s = spec.response_len, spec.prompts, spec.rollouts, spec.steps
  common = dict(levels=spec.post_levels, task_dir=task_dir, seed=key.seed, lr=spec.lr,
                validate_every=max(1, s // 4))
  sft_loss, sft_rows = c.baseline("sft", width=w)
  if key.method is Method.SFT:
    return [_base(spec, prompts=p * n, rollouts=1, model=model,
                  phases=(c.Phase(loss=sft_loss, rows=sft_rows, steps=s),), **common)]
  if key.method is Method.GRPO:
    return [_base(spec, prompts=p, rollouts=n, model=model,
                  phases=(c.Phase(loss=_grpo(w), rows=c.RowSource.ROLLOUTS, steps=s),), **common)]
  if key.method is Method.SFT_GRPO:
    half = s // 2
    stage2 = c.ModelSource(config=_model(spec), hf_dir=stage_dir, tokenizer_dir=base_dir)
    return [_base(spec, prompts=p * n, rollouts=1, model=model,
                  phases=(c.Phase(loss=sft_loss, rows=sft_rows, steps=half),), **common),
            _base(spec, prompts=p, rollouts=n, model=stage2,
                  phases=(c.Phase(loss=_grpo(w), rows=c.RowSource.ROLLOUTS, steps=s - half),), **common)]
  if key.method is Method.LUFFY:
    loss, rows = c.baseline("luffy", width=w)
    return [_base(spec, prompts=p, rollouts=n - 1, model=model, phases=(c.Phase(loss=loss, rows=rows, steps=s),),
                  **common)]
  loss, rows = c.baseline("hpt", width=w)
  return [_base(spec, prompts=p, rollouts=n, model=model, gamma=key.gamma,
                phases=(c.Phase(loss=loss, rows=rows, steps=s),), **common)]


def builtin_task_config(config: c.TrainConfig):
  """The `BuiltinTaskConfig` the training data source materialises for `config` (same arguments)."""
  from hpt_jax import data as data_lib  # deferred: heavy
  d = config.data
  return data_lib.BuiltinTaskConfig(
      seed=d.builtin_seed, levels=d.builtin_levels, train_per_level=max(1, d.builtin_problems // len(d.builtin_levels)),
      eval_per_level=max(1, config.validation.num_problems), vocab_size=config.model.config.vocab_size)


def all_runs(spec: Spec) -> list[RunKey]:
  """Table 2's methods (HPT at γ = 0) and Table 6's extra gates, every seed."""
  # Seed by seed, HPT and the on-policy baseline first: a sweep cut short still has whole seeds of
  # every table, and the central comparison first.
  order = [m for m in (Method.HPT, Method.GRPO, Method.SFT, Method.LUFFY, Method.SFT_GRPO)
           if spec.methods is None or m in spec.methods]
  return [key for seed in spec.seeds
          for key in [RunKey(m, seed) for m in order] + [RunKey(Method.HPT, seed, g) for g in spec.gammas if g != 0]]
