"""`TrainConfig`: one frozen tree holding everything a training run needs, and its validation.

The tree composes the other packages' own configs where they exist (`ModelConfig`, `OptimConfig`,
the UPGE algorithm dataclasses, `CheckpointConfig`, `LoggingConfig`) with small sections for the
rest. Every leaf is overridable from the command line (`--set optim.learning_rate=1e-6`,
`--set phases.0.algorithm.entropy_coeff=0`, see `overrides.py`), and `with_algorithm` swaps in a
baseline from the UPGE table.

`validate` runs before anything is compiled or loaded and refuses impossible runs with a
`ConfigError` naming the field: a batch the mesh cannot split, a response bucket beyond the model's
positions, missing files, an unknown algorithm.

SFT→GRPO is two `Phase`s of one run: the loop runs `phases[0].steps` steps of the first algorithm,
then the next phase, with one step counter, one checkpoint directory and one metrics file.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import pathlib

import jax.numpy as jnp

from hpt_jax.data import PromptTemplate
from hpt_jax.hybrid import DemoLoss, HardGate, Threshold
from hpt_jax.hybrid.objective import AdvantageEstimator, LossConfig, LossMode
from hpt_jax.models import DTypePolicy, ModelConfig, presets
from hpt_jax.training.checkpoint import CheckpointConfig
from hpt_jax.training.mesh import MeshConfig
from hpt_jax.training.old_logprobs import OldLogProbs, PolicyPair, should_recompute
from hpt_jax.training.metrics import LoggingConfig
from hpt_jax.training.optimizer import OptimConfig
from hpt_jax.training.overrides import ConfigError, apply_overrides
from hpt_jax.upge import algorithms

_section = dataclasses.dataclass(frozen=True, kw_only=True)


@_section
class ModelSource:
  """Which model to post-train.

  Attributes:
    config: the architecture when starting from random weights (`hf_dir` unset). With `hf_dir`, only
      its run-time choices are kept (`RUNTIME_FIELDS`: dtype policy, remat, attention query chunk),
      which config.json does not describe.
    hf_dir: a Hugging Face `save_pretrained` directory to start from (its config.json wins over
      `config` for the architecture, except for the rope overrides below).
    tokenizer_dir: a `transformers` tokenizer directory; default `hf_dir`, or the built-in task's
      tokenizer when training on the built-in task.
    rope_theta, max_position_embeddings: overrides applied on top of `hf_dir`'s config (HPT's 7B
      recipe: 40000 and 16384); None keeps the file's values.
  """
  config: ModelConfig = presets.tiny()
  hf_dir: pathlib.Path | None = None
  tokenizer_dir: pathlib.Path | None = None
  rope_theta: float | None = None
  max_position_embeddings: int | None = None


@_section
class DataConfig:
  """Training data.

  Attributes:
    train_file: parquet/jsonl in the OpenR1-Math-46k schema; None uses the built-in arithmetic task.
    builtin_problems: number of generated problems of the built-in task.
    builtin_levels: difficulty levels of the built-in task.
    builtin_seed: seed of the built-in task's generator.
    builtin_dir: where the built-in task's files are written (reused when they match); default
      `<workdir>/builtin_task`.
    max_prompt_length: prompts longer than this (after templating) are dropped.
    max_response_length: rollouts stop and demonstrations are truncated here (8192 in the paper).
    shuffle_seed: seed of the resumable data sampler (47 in the official code).
    template: how questions become prompts (chat template, or Llama's zero-shot text).
    max_bad_fraction: the share of malformed rows tolerated (skipped and reported) when loading.
    reward_workers: processes scoring rewards.
    reward_timeout_s: per-answer verifier time limit (a timed-out answer scores 0 and is counted).
  """
  train_file: pathlib.Path | None = None
  builtin_problems: int = 2048
  builtin_levels: tuple[int, ...] = (1, 2, 3, 4, 5)
  builtin_seed: int = 0
  builtin_dir: pathlib.Path | None = None
  max_prompt_length: int = 1024
  max_response_length: int = 8192
  shuffle_seed: int = 47
  template: PromptTemplate = PromptTemplate.CHAT
  max_bad_fraction: float = 0.01
  reward_workers: int = 2
  reward_timeout_s: float = 5.0


class GroupFilter(enum.Enum):
  """DAPO's dynamic sampling: which rollout groups are dropped and replaced by fresh questions."""
  OFF = "off"  # keep every group
  EQUAL_REWARDS = "equal_rewards"  # drop groups whose n rewards are all equal (zero advantage)


@_section
class SamplingConfig:
  """Rollouts: n samples per prompt at temperature / top-p / top-k, in static length buckets.

  Attributes:
    rollouts_per_prompt: n (8 in the paper).
    temperature, top_p, top_k: the sampling distribution (1.0 / 1.0 / 0 = off in the paper).
    prompt_buckets: allowed padded prompt lengths (each <= data.max_prompt_length is useful).
    response_buckets: allowed response lengths; the largest must reach data.max_response_length.
    dtype_policy: the sampler's compute dtypes; None = the model's (as training). A different one
      makes the sampler's log-probs another policy's, so π_old is recomputed (`Phase.old_logprobs`).
    group_filter: DAPO's dynamic sampling (pure RL phases only): drop the groups `group_filter`
      names and sample fresh questions until the step has `batch.prompts_per_step` groups.
    max_sampling_tries: at most this many question batches per step (DAPO's max_num_gen_batches);
      at the cap, the latest dropped groups fill the batch.
  """
  rollouts_per_prompt: int = 8
  temperature: float = 1.0
  top_p: float = 1.0
  top_k: int = 0
  prompt_buckets: tuple[int, ...] = (256, 512, 1024)
  response_buckets: tuple[int, ...] = (1024, 4096, 8192)
  dtype_policy: DTypePolicy | None = None
  group_filter: GroupFilter = GroupFilter.OFF
  max_sampling_tries: int = 10

  def model_config(self, model: ModelConfig) -> ModelConfig:
    """The config the sampler computes with: the model's, or `dtype_policy` when set."""
    return model if self.dtype_policy is None else model.replace(dtype_policy=self.dtype_policy)


@_section
class GateConfig:
  """HPT's hard gate: a question goes to its demonstration when correct ≤ γ.

  Attributes:
    gamma_count: γ as a count of correct rollouts (0 for Qwen, 2 for Llama); set this or
      gamma_fraction.
    gamma_fraction: γ as a fraction of n (P ≤ γ).
    demo_sft_weight, demo_off_policy_weight: what acts on a demonstration row (SFT/ON = 1, 0;
      OFF/ON = 0, 1; Mix/ON = 0.1, 1.0).
    drop_demo_questions: never revisit questions once sent to SFT (`remove_sfted_data`).
  """
  gamma_count: int | None = 0
  gamma_fraction: float | None = None
  demo_sft_weight: float = 1.0
  demo_off_policy_weight: float = 0.0
  drop_demo_questions: bool = False

  def build(self) -> HardGate:
    try:
      threshold = Threshold(fraction=self.gamma_fraction, count=self.gamma_count)
      demo = DemoLoss(sft=self.demo_sft_weight, off_policy=self.demo_off_policy_weight)
    except ValueError as e:
      raise ConfigError(f"gate: {e} (set exactly one of gate.gamma_count / gate.gamma_fraction)") from e
    return HardGate(threshold=threshold, demo=demo)


@_section
class BatchConfig:
  """How a step's rows become optimizer steps.

  Attributes:
    prompts_per_step: questions sampled per training step (128 in the paper).
    rows_per_optimizer_step: rows per mini-batch, one optimizer step each (512 in the paper: 2
      optimizer steps per 1,024 all-RL rows; SFT rows replace n rollouts by one, so fewer).
    rows_per_micro_batch: rows per gradient-accumulation micro-batch; divides by the mesh's
      batch size (data × fsdp) and divides rows_per_optimizer_step.
    shared_prompts: train on the shared-prompt layout (`batching.SharedPrompts`): each distinct
      prompt of the batch is computed once per update and its rows' responses attend to it, instead of once
      per row (n rollouts of a question share it). Same loss and gradients as plain
      `prompt ++ response` rows, for every objective whose Σ/T width is set (the loop's baselines
      set it; `width=None` would take the padded response width here, the row width there).
      Phases of demonstrations only (`RowSource.DEMOS`, one row per question) keep the plain rows.
      `--set batch.shared_prompts=false` turns it off.
    response_granules: g > 0 runs each shared-prompt micro-batch's per-token work on its real
      response tokens only, packed into the smallest of k/g of its slots that holds them, in the train
      step and the π_old recompute (`training.response_packing`: g compiled branches, one picked per
      micro-batch at run time, so no recompilation): responses that end early stop costing their
      padded slots. Same loss and gradients. 0 (default) computes every slot; it needs an unsplit
      batch (mesh data × fsdp = 1).
  """
  prompts_per_step: int = 128
  rows_per_optimizer_step: int = 512
  rows_per_micro_batch: int = 64
  shared_prompts: bool = True
  response_granules: int = 0


@_section
class ValidationConfig:
  """Periodic validation on held-out problems with the evaluator.

  Attributes:
    every_steps: validate every this many steps (0 = never); also before training when
      `before_training`.
    num_problems: held-out problems (from the built-in task, or `file`).
    samples_per_problem: n_val (8 in the official code).
    temperature: 0.6 in the official code (top-p 1.0, as its validation path really ran).
    file: a benchmark file in a public schema; None uses held-out built-in problems.
    benchmark: the evaluation package's name of `file`'s benchmark (its schema and grading).
  """
  every_steps: int = 10
  before_training: bool = False
  num_problems: int = 32
  samples_per_problem: int = 1
  temperature: float = 0.6
  file: pathlib.Path | None = None
  benchmark: str = "math500"


class RowSource(enum.Enum):
  """Which training rows a question contributes in a phase."""
  GATE = "gate"  # HPT: the gate picks the rollouts (RL) or the demonstration (SFT)
  ROLLOUTS = "rollouts"  # on-policy RL baselines: always the n rollouts
  DEMOS = "demos"  # SFT: only the demonstration, no sampling at all
  ROLLOUTS_AND_DEMOS = "rollouts_and_demos"  # LUFFY / SRFT: rollouts + demonstration, one group


@_section
class Phase:
  """One phase of training: `steps` steps with the train step's `loss` on `rows`.

  `loss.advantage` names the estimator; the loop computes Â over the whole step's rows before they
  are split into mini-batches (as the official code does), and hands them to the step as given.
  `old_logprobs` says where π_old of the later mini-batches comes from (`old_logprobs.OldLogProbs`:
  the sampler's, or a teacher-forced recompute when the sampling policy is not the training one).
  """
  loss: LossConfig = LossConfig(algorithm=algorithms.HptRl(width=8192), rl_width=8192)
  rows: RowSource = RowSource.GATE
  steps: int = 500
  old_logprobs: OldLogProbs = OldLogProbs.AUTO

  def policies(self, model: ModelConfig, sampling: SamplingConfig) -> PolicyPair:
    """The sampling-time and training-time policies of this phase (for `should_recompute`)."""
    return PolicyPair(sampling_temperature=sampling.temperature, loss_temperature=self.loss.temperature,
                      sampling_dtype=str(jnp.dtype(sampling.model_config(model).dtype)),
                      training_dtype=str(jnp.dtype(model.dtype)))


def baseline(name: str | algorithms.AlgorithmName, *, width: int) -> tuple[LossConfig, RowSource]:
  """The (loss, rows) of a named algorithm as the paper's comparisons run it.

  Args:
    name: a name from the UPGE table.
    width: the constant response width T of the official Σ/T normaliser (max response length).

  Raises:
    ConfigError: naming `algorithm` for unknown names, and for table entries the loop cannot run
      (PPO needs a value model; the HPT branches alone are not baselines).
  """
  try:
    key = algorithms.parse_algorithm_name(name)
  except ValueError as e:
    raise ConfigError(str(e)) from e
  a = algorithms.AlgorithmName
  on_policy = lambda algo, adv: (LossConfig(algorithm=algo, sft=False, mode=LossMode.GLOBAL, advantage=adv,
                                            entropy_coeff=0.0, rl_width=width), RowSource.ROLLOUTS)
  official = dict(mode=LossMode.OFFICIAL, advantage=AdvantageEstimator.DR_GRPO, entropy_coeff=0.001,
                  rl_width=width)
  table = {
      a.SFT: lambda: (LossConfig(algorithm=None, sft=True, mode=LossMode.GLOBAL, entropy_coeff=0.0,
                                 rl_width=width), RowSource.DEMOS),
      a.GRPO: lambda: on_policy(algorithms.Grpo(), AdvantageEstimator.GRPO),
      a.DR_GRPO: lambda: on_policy(algorithms.DrGrpo(width=width), AdvantageEstimator.DR_GRPO),
      a.DAPO: lambda: on_policy(algorithms.Dapo(), AdvantageEstimator.GRPO),
      a.CISPO: lambda: on_policy(algorithms.Cispo(), AdvantageEstimator.GRPO),
      a.GSPO: lambda: on_policy(algorithms.Gspo(), AdvantageEstimator.GRPO),
      a.LUFFY: lambda: (LossConfig(algorithm=algorithms.Luffy(width=width, entropy_coeff=0.0), sft=False,
                                   **official), RowSource.ROLLOUTS_AND_DEMOS),
      a.SRFT: lambda: (LossConfig(algorithm=algorithms.Srft(width=width, entropy_coeff=0.0), sft=False,
                                  **official), RowSource.ROLLOUTS_AND_DEMOS),
      a.HPT: lambda: (LossConfig(algorithm=algorithms.HptRl(width=width), sft=True, **official),
                      RowSource.GATE),
  }
  if key not in table:
    runnable = ", ".join(k.value for k in table)
    raise ConfigError(f"algorithm: {key.value!r} cannot be run by the training loop (PPO needs a value "
                      f"model; hpt_rl / hpt_sft are HPT's branches); runnable: {runnable}")
  return table[key]()


@_section
class TrainConfig:
  """Everything a run needs; see the module docstring.

  Attributes (beyond the sections):
    training_token_budget: None, or stop the run after the first step at which the training tokens
      consumed so far reach this many (the real prompt + response tokens of every row the train step
      updated on, padding excluded: the `train/tokens` metric, summed in `train/tokens_total`). The
      phases' `steps` are then an upper bound (the run ends at whichever comes first), the run exports
      `hf_final` as at its last step, and a lr schedule meant to end with the budget counts tokens
      (`optim.schedule_unit=TOKENS`, `optim.total_steps` = the budget).
    seed: the run's seed (model init, sampling, data order).
  """
  model: ModelSource = ModelSource()
  data: DataConfig = DataConfig()
  sampling: SamplingConfig = SamplingConfig()
  gate: GateConfig = GateConfig()
  batch: BatchConfig = BatchConfig()
  mesh: MeshConfig = MeshConfig()
  optim: OptimConfig = OptimConfig()
  phases: tuple[Phase, ...] = (Phase(),)
  validation: ValidationConfig = ValidationConfig()
  checkpoint: CheckpointConfig = CheckpointConfig()
  logging: LoggingConfig = LoggingConfig()
  training_token_budget: int | None = None
  seed: int = 0

  @property
  def total_steps(self) -> int:
    return sum(p.steps for p in self.phases)

  def phase_at(self, step: int) -> tuple[int, Phase]:
    """(index, phase) that runs training step `step` (0-based)."""
    end = 0
    for i, phase in enumerate(self.phases):
      end += phase.steps
      if step < end:
        return i, phase
    raise ValueError(f"step {step} is past the last phase (total {self.total_steps} steps)")


def with_algorithm(config: TrainConfig, name: str) -> TrainConfig:
  """Runs every phase with the named baseline (see `baseline`), at its default hyperparameters.

  Raises:
    ConfigError: naming `algorithm` and listing the known names when `name` is not in the table.
  """
  loss, rows = baseline(name, width=config.data.max_response_length)
  config = dataclasses.replace(
      config, phases=tuple(dataclasses.replace(p, loss=loss, rows=rows) for p in config.phases))
  if algorithms.parse_algorithm_name(name) is algorithms.AlgorithmName.DAPO:
    # DAPO = its clipped token-level loss + dynamic sampling of informative groups.
    config = dataclasses.replace(config, sampling=dataclasses.replace(
        config.sampling, group_filter=GroupFilter.EQUAL_REWARDS))
  return config


# How the model computes, not what it is: config.json cannot say, so `model.config` keeps them.
RUNTIME_FIELDS = ("dtype_policy", "remat", "attention_query_chunk", "scan_layers")


def resolve_model_config(source: ModelSource) -> ModelConfig:
  """The model to build: `hf_dir`'s config.json with `config`'s run-time fields (`RUNTIME_FIELDS`)
  and the rope overrides, or `config` itself."""
  if source.hf_dir is None:
    config = source.config
  else:
    config_file = pathlib.Path(source.hf_dir) / "config.json"
    if not config_file.is_file():
      raise ConfigError(f"model.hf_dir: {str(config_file)!r} does not exist")
    runtime = {name: getattr(source.config, name) for name in RUNTIME_FIELDS}
    try:
      config = ModelConfig.from_hf_config(json.loads(config_file.read_text()), **runtime)
    except ValueError as e:
      raise ConfigError(f"model.hf_dir: {e}") from e
  changes = {}
  if source.rope_theta is not None:
    changes["rope_theta"] = source.rope_theta
  if source.max_position_embeddings is not None:
    changes["max_position_embeddings"] = source.max_position_embeddings
  return config.replace(**changes) if changes else config


def _require_file(path: pathlib.Path | None, field: str) -> None:
  if path is not None and not pathlib.Path(path).exists():
    raise ConfigError(f"{field}: {str(path)!r} does not exist")


def validate(config: TrainConfig, *, num_devices: int) -> ModelConfig:
  """Refuses impossible runs before anything is built; returns the resolved model config.

  Raises:
    ConfigError: naming the field.
  """
  _require_file(config.model.hf_dir, "model.hf_dir")
  _require_file(config.model.tokenizer_dir, "model.tokenizer_dir")
  _require_file(config.data.train_file, "data.train_file")
  _require_file(config.validation.file, "validation.file")
  model = resolve_model_config(config.model)
  for i, phase in enumerate(config.phases):
    if phase.steps < 0:
      raise ConfigError(f"phases.{i}.steps must be >= 0, got {phase.steps}")
  if not config.phases or config.total_steps < 1:
    raise ConfigError("phases: the run needs at least one phase with steps >= 1")
  if config.training_token_budget is not None and config.training_token_budget < 1:
    raise ConfigError(f"training_token_budget must be >= 1 (or None: no budget), got "
                      f"{config.training_token_budget}")

  data, sampling, batch = config.data, config.sampling, config.batch
  if max(sampling.response_buckets) < data.max_response_length:
    raise ConfigError(f"sampling.response_buckets: the largest bucket {max(sampling.response_buckets)} "
                      f"is below data.max_response_length={data.max_response_length}")
  if max(sampling.prompt_buckets) < data.max_prompt_length:
    raise ConfigError(f"sampling.prompt_buckets: the largest bucket {max(sampling.prompt_buckets)} "
                      f"is below data.max_prompt_length={data.max_prompt_length}")
  longest = data.max_prompt_length + data.max_response_length
  if longest > model.max_position_embeddings:
    raise ConfigError(
        f"data.max_response_length: prompt ({data.max_prompt_length}) + response "
        f"({data.max_response_length}) = {longest} tokens exceed the model's "
        f"max_position_embeddings={model.max_position_embeddings} (raise "
        "model.max_position_embeddings, or shorten the response bucket)")
  for name in ("rollouts_per_prompt", "max_sampling_tries"):
    if getattr(sampling, name) < 1:
      raise ConfigError(f"sampling.{name} must be >= 1, got {getattr(sampling, name)}")
  for name in ("prompts_per_step", "rows_per_optimizer_step", "rows_per_micro_batch"):
    if getattr(batch, name) < 1:
      raise ConfigError(f"batch.{name} must be >= 1, got {getattr(batch, name)}")

  if config.mesh.size > num_devices:
    raise ConfigError(f"mesh: data × fsdp × tensor = {config.mesh.size} but only {num_devices} devices "
                      "are available")
  batch_shards = config.mesh.batch_shards
  if batch.rows_per_micro_batch % batch_shards:
    raise ConfigError(
        f"batch.rows_per_micro_batch={batch.rows_per_micro_batch} is not divisible by the mesh's "
        f"batch shards (mesh.data × mesh.fsdp = {batch_shards})")
  if batch.rows_per_optimizer_step % batch.rows_per_micro_batch:
    raise ConfigError(
        f"batch.rows_per_optimizer_step={batch.rows_per_optimizer_step} is not a multiple of "
        f"batch.rows_per_micro_batch={batch.rows_per_micro_batch}")
  if batch.response_granules < 0:
    raise ConfigError(f"batch.response_granules must be >= 0, got {batch.response_granules}")
  if batch.response_granules and batch_shards > 1:
    raise ConfigError(
        f"batch.response_granules={batch.response_granules} packs responses across the rows of a "
        f"micro-batch, which needs the rows on one device; the mesh splits them over data × fsdp = "
        f"{batch_shards} (set batch.response_granules=0 on this mesh)")
  rollout_rows = batch.prompts_per_step * sampling.rollouts_per_prompt
  if rollout_rows % batch_shards:
    raise ConfigError(
        f"batch.prompts_per_step: {batch.prompts_per_step} prompts × {sampling.rollouts_per_prompt} "
        f"rollouts = {rollout_rows} rows are not divisible by the mesh's batch shards ({batch_shards})")
  for i, phase in enumerate(config.phases):
    if phase.rows is not RowSource.DEMOS:
      try:
        should_recompute(phase.old_logprobs, phase.policies(model, sampling))
      except ValueError as e:
        raise ConfigError(f"phases.{i}.old_logprobs: {e}") from e
    if sampling.group_filter is not GroupFilter.OFF and phase.rows not in (RowSource.ROLLOUTS, RowSource.DEMOS):
      raise ConfigError(f"sampling.group_filter={sampling.group_filter.value} drops rollout groups of pure RL "
                        f"phases only; phases.{i}.rows is {phase.rows.value}")
    if phase.loss.mode is LossMode.OFFICIAL and batch.rows_per_micro_batch % phase.loss.official_ranks:
      raise ConfigError(f"phases.{i}.loss.official_ranks={phase.loss.official_ranks} does not divide "
                        f"batch.rows_per_micro_batch={batch.rows_per_micro_batch}")
  config.gate.build()
  if config.validation.every_steps < 0:
    raise ConfigError(f"validation.every_steps must be >= 0, got {config.validation.every_steps}")
  return model


def build_config(base: TrainConfig, *, algorithm: str | None = None,
                 overrides: tuple[str, ...] = ()) -> TrainConfig:
  """`base` with the `--algorithm` choice, then the `--set` overrides, applied."""
  if not isinstance(base, TrainConfig):
    raise ConfigError(f"config: get_config() returned {type(base).__name__}, expected TrainConfig")
  config = with_algorithm(base, algorithm) if algorithm else base
  return apply_overrides(config, overrides)
