"""The paper's training recipe (PAPER.md §2.3, §3) as `TrainConfig`s, shared by the files beside it.

Each `experiments/paper/<run>.py` is a config file for `python -m hpt_jax.train --config ...`; they
differ only in the model, the algorithm (HPT or a baseline), the learning rate and the gate. What
they share is here:

  128 prompts x 8 rollouts per step, temperature 1.0 / top-p 1.0, prompts <= 1024 and responses
  <= 8192 tokens, AdamW lr 5e-6 constant (1e-6 for LUFFY / SRFT), weight decay 0.01, grad clip 1.0,
  skip above a grad norm of 80 (Qwen scripts only), entropy bonus 0.001, Dr.GRPO advantages, no
  clip, the official per-micro-batch normalisation with 8 data-parallel ranks, 512 rows per
  optimizer step, 500 steps, validation every 10 steps, a checkpoint every 50.

Paths: the training file, the validation file and the base-model directories are read from
`$HPT_DATA_DIR` (default `data/`) and `$HPT_MODELS_DIR` (default `models/`); README.md lists which
public dataset / model each name comes from. Nothing is downloaded here.

The default mesh is 8 GPUs (fsdp = 8, the official ZeRO-3 layout); `MESHES` lists the suggested
layouts per platform, applied with `--set mesh.fsdp=... --set batch.rows_per_micro_batch=...`
(see README.md).
"""

from __future__ import annotations

import dataclasses
import enum
import os
import pathlib

from hpt_jax.data import PromptTemplate
from hpt_jax.hybrid.objective import AdvantageEstimator, LossConfig, LossMode
from hpt_jax.models import DTypePolicy, ModelConfig, RematPolicy, presets
from hpt_jax.training import config as c
from hpt_jax.training.checkpoint import CheckpointConfig
from hpt_jax.training.mesh import MeshConfig
from hpt_jax.training.optimizer import OptimConfig
from hpt_jax.upge import algorithms

MAX_PROMPT = 1024
MAX_RESPONSE = 8192
STEPS = 500
# The official run normalises each of its 8 data-parallel ranks' micro-batches separately.
OFFICIAL_RANKS = 8

# Names under $HPT_DATA_DIR / $HPT_MODELS_DIR (README.md: where each comes from).
TRAIN_FILE = "openr1_math_46k_8192.parquet"  # Elliott/Openr1-Math-46k-8192, system prompt kept
VALIDATION_FILE = "math500.jsonl"  # zwhe99/MATH:math500


def data_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("HPT_DATA_DIR", "data"))


def models_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("HPT_MODELS_DIR", "models"))


class Base(enum.Enum):
  """The three base models, by their Hugging Face repository name."""
  QWEN_7B = "Qwen2.5-Math-7B"
  QWEN_1_5B = "Qwen2.5-Math-1.5B"
  LLAMA_8B = "Llama-3.1-8B"


@dataclasses.dataclass(frozen=True)
class BaseRecipe:
  """What changes with the base model."""
  preset: ModelConfig
  rope_theta: float | None  # override on top of the checkpoint's config.json
  max_position_embeddings: int | None
  template: PromptTemplate
  skip_above_norm: float | None  # the Qwen script skips updates with grad norm > 80; LLaMA's none
  gamma_count: int  # γ·n: 0 for Qwen, 2 (of 8) for LLaMA


def _numerics(preset: ModelConfig) -> ModelConfig:
  # bf16 compute with fp32 masters, a full remat of every layer and query-chunked attention: the
  # activation budget that makes 9,216-token rows fit (README.md's memory table).
  return preset.replace(dtype_policy=DTypePolicy.BFLOAT16, remat=RematPolicy.FULL,
                        attention_query_chunk=1024)


BASES: dict[Base, BaseRecipe] = {
    # train.sh: "Following LUFFY, rope_theta should be reset to 40000 and max_position_embeddings
    # to 16384".
    Base.QWEN_7B: BaseRecipe(preset=_numerics(presets.qwen25_math_7b_hpt()), rope_theta=40000.0,
                             max_position_embeddings=16384, template=PromptTemplate.CHAT,
                             skip_above_norm=80.0, gamma_count=0),
    # The 1.5B's stock 4,096 positions cannot hold 1,024 + 8,192 tokens; whether the authors used
    # the 7B's override here is UNVERIFIED (PAPER.md §3). We apply the same one.
    Base.QWEN_1_5B: BaseRecipe(
        preset=_numerics(presets.qwen25_math_1_5b(rope_theta=40000.0, max_position_embeddings=16384)),
        rope_theta=40000.0, max_position_embeddings=16384, template=PromptTemplate.CHAT,
        skip_above_norm=80.0, gamma_count=0),
    # Llama-3.1 already has 131,072 positions; the zero-shot "Question: ... Answer:" template.
    Base.LLAMA_8B: BaseRecipe(preset=_numerics(presets.llama31_8b()), rope_theta=None,
                              max_position_embeddings=None, template=PromptTemplate.LLAMA_ZERO,
                              skip_above_norm=None, gamma_count=2),
}


class Method(enum.Enum):
  HPT = "hpt"
  SFT = "sft"
  GRPO = "grpo"
  SFT_GRPO = "sft_grpo"
  LUFFY = "luffy"
  SRFT = "srft"


# LUFFY / SRFT run at 1e-6 in the official scripts (train_luffy.sh, train_srft.sh); the rest 5e-6.
LEARNING_RATES = {Method.LUFFY: 1e-6, Method.SRFT: 1e-6}


def _official(algorithm) -> LossConfig:
  return LossConfig(algorithm=algorithm, sft=False, mode=LossMode.OFFICIAL,
                    advantage=AdvantageEstimator.DR_GRPO, entropy_coeff=0.001, rl_width=MAX_RESPONSE,
                    official_ranks=OFFICIAL_RANKS)


def phases(method: Method, *, steps: int = STEPS) -> tuple[c.Phase, ...]:
  """The training phases of `method` at the paper's settings.

  GRPO is the official framework without demonstrations (PAPER.md §6: "presumably the same
  framework"): Dr.GRPO advantages, unclipped ratio, token-sum / 8192, entropy bonus 0.001 —
  i.e. HPT's RL branch on every question. `--algorithm grpo` gives the textbook clipped GRPO instead.
  SFT's hyperparameters are not in the paper (UNVERIFIED); it runs here on the same 500 × 128
  demonstrations at the same constant lr, token-mean NLL, no entropy bonus. SFT→GRPO runs SFT for
  `steps` then GRPO for `steps` (the paper notes it costs more than HPT); whether its RL stage used
  the 48k complement set is UNVERIFIED, so both stages read the same training file.
  """
  hpt = LossConfig(algorithm=algorithms.HptRl(width=MAX_RESPONSE), sft=True, mode=LossMode.OFFICIAL,
                   advantage=AdvantageEstimator.DR_GRPO, entropy_coeff=0.001, rl_width=MAX_RESPONSE,
                   official_ranks=OFFICIAL_RANKS)
  sft = LossConfig(algorithm=None, sft=True, mode=LossMode.OFFICIAL, entropy_coeff=0.0,
                   rl_width=MAX_RESPONSE, official_ranks=OFFICIAL_RANKS)
  grpo = _official(algorithms.HptRl(width=MAX_RESPONSE))
  table = {
      Method.HPT: (c.Phase(loss=hpt, rows=c.RowSource.GATE, steps=steps),),
      Method.SFT: (c.Phase(loss=sft, rows=c.RowSource.DEMOS, steps=steps),),
      Method.GRPO: (c.Phase(loss=grpo, rows=c.RowSource.ROLLOUTS, steps=steps),),
      Method.SFT_GRPO: (c.Phase(loss=sft, rows=c.RowSource.DEMOS, steps=steps),
                        c.Phase(loss=grpo, rows=c.RowSource.ROLLOUTS, steps=steps)),
      Method.LUFFY: (c.Phase(loss=_official(algorithms.Luffy(width=MAX_RESPONSE, entropy_coeff=0.0)),
                             rows=c.RowSource.ROLLOUTS_AND_DEMOS, steps=steps),),
      Method.SRFT: (c.Phase(loss=_official(algorithms.Srft(width=MAX_RESPONSE, entropy_coeff=0.0)),
                            rows=c.RowSource.ROLLOUTS_AND_DEMOS, steps=steps),),
  }
  return table[method]


@dataclasses.dataclass(frozen=True)
class Platform:
  """A suggested layout: the mesh, rows per micro-batch (a multiple of data × fsdp) and HBM/device."""
  name: str
  mesh: MeshConfig
  rows_per_micro_batch: int
  hbm_gib: float
  hosts: int


# fsdp over every device (ZeRO-3, as the official FSDP run). The micro-batch is 2 rows per device
# on 8 GPUs (the official 32,768-token dynamic micro-batch holds ~3 rows of 9,216 tokens) and one
# row per chip on the pods; the rollout batch (1,024 rows) then puts 128 / 32 / 16 rows per device.
MESHES: dict[str, Platform] = {
    "gpu8": Platform(name="8x H100/A800 80GB", mesh=MeshConfig(fsdp=8), rows_per_micro_batch=16,
                     hbm_gib=80.0, hosts=1),
    "v5p-64": Platform(name="TPU v5p-64 (32 chips, 95 GB)", mesh=MeshConfig(fsdp=32),
                       rows_per_micro_batch=32, hbm_gib=95.0, hosts=8),
    "v6e-64": Platform(name="TPU v6e-64 (64 chips, 32 GB)", mesh=MeshConfig(fsdp=64),
                       rows_per_micro_batch=64, hbm_gib=32.0, hosts=16),
}


def recipe(base: Base, method: Method, *, platform: str = "gpu8") -> c.TrainConfig:
  """The TrainConfig of `method` post-training `base` on `platform` (a key of MESHES)."""
  b = BASES[base]
  p = MESHES[platform]
  return c.TrainConfig(
      model=c.ModelSource(config=b.preset, hf_dir=models_dir() / base.value,
                          rope_theta=b.rope_theta, max_position_embeddings=b.max_position_embeddings),
      data=c.DataConfig(train_file=data_dir() / TRAIN_FILE, max_prompt_length=MAX_PROMPT,
                        max_response_length=MAX_RESPONSE, shuffle_seed=47, template=b.template,
                        reward_workers=32, reward_timeout_s=5.0),
      sampling=c.SamplingConfig(rollouts_per_prompt=8, temperature=1.0, top_p=1.0, top_k=0,
                                prompt_buckets=(256, 512, MAX_PROMPT),
                                response_buckets=(1024, 4096, MAX_RESPONSE)),
      gate=c.GateConfig(gamma_count=b.gamma_count, demo_sft_weight=1.0, demo_off_policy_weight=0.0),
      batch=c.BatchConfig(prompts_per_step=128, rows_per_optimizer_step=512,
                          rows_per_micro_batch=p.rows_per_micro_batch),
      mesh=p.mesh,
      optim=OptimConfig(learning_rate=LEARNING_RATES.get(method, 5e-6), weight_decay=0.01,
                        clip_norm=1.0, skip_above_norm=b.skip_above_norm),
      phases=phases(method),
      # The official run validates AIME24 + AMC23 + MATH-500 with 8 samples at temperature 0.6;
      # the loop takes one file, MATH-500, the largest of the three.
      validation=c.ValidationConfig(every_steps=10, before_training=True, num_problems=500,
                                    samples_per_problem=8, temperature=0.6,
                                    file=data_dir() / VALIDATION_FILE, benchmark="math500"),
      checkpoint=CheckpointConfig(every_steps=50, keep_last=2, keep_best=1),
      seed=0,
  )
