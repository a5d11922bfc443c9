"""Tiny runs for the loop tests: the built-in arithmetic task at level 1 and a 1-layer model.

Imported by tests/test_train_loop*.py and by the multi-process test's child script.
"""

import dataclasses
import pathlib
import zlib

import numpy as np

from hpt_jax.models import presets
from hpt_jax.training import config as c


def tiny_config(builtin_dir: pathlib.Path, *, steps: int = 2, algorithm: str = "hpt", **sections
                ) -> c.TrainConfig:
  """A seconds-scale run: 1-layer width-64 model, 4 prompts x 4 rollouts, 16-token responses."""
  response = 16
  loss, rows = c.baseline(algorithm, width=response)
  base = c.TrainConfig(
      model=c.ModelSource(config=presets.tiny(hidden_size=64, intermediate_size=128, num_layers=1,
                                              num_heads=2, num_kv_heads=1, head_dim=32,
                                              max_position_embeddings=64)),
      data=c.DataConfig(builtin_problems=32, builtin_levels=(1,), builtin_dir=builtin_dir,
                        max_prompt_length=32, max_response_length=response, reward_workers=1),
      sampling=c.SamplingConfig(rollouts_per_prompt=4, prompt_buckets=(32,), response_buckets=(response,)),
      gate=c.GateConfig(gamma_count=0),
      batch=c.BatchConfig(prompts_per_step=4, rows_per_optimizer_step=8, rows_per_micro_batch=4),
      optim=c.OptimConfig(learning_rate=1e-2, weight_decay=0.0, skip_above_norm=None),
      phases=(c.Phase(loss=loss, rows=rows, steps=steps),),
      validation=c.ValidationConfig(every_steps=0, num_problems=4),
      checkpoint=c.CheckpointConfig(every_steps=1, keep_last=2, keep_best=1, export_hf=False),
      logging=c.LoggingConfig(progress_bar=False),
  )
  return dataclasses.replace(base, **sections)


def multiprocess_config(builtin_dir) -> c.TrainConfig:
  """2 HPT steps on a data=4 mesh (2 processes x 2 devices, or 1 process x 4 devices).

  4-row updates (several per step) with the loss at T = 0.8 while rollouts are drawn at T = 1, so
  the later updates' π_old is recomputed; rewards from `lenient_scorer` (see `multiprocess_data`);
  validation (the evaluator through the same sampler) after the last step.
  """
  from hpt_jax.training.mesh import MeshConfig
  config = tiny_config(pathlib.Path(builtin_dir), steps=2, algorithm="hpt", mesh=MeshConfig(data=4),
                       batch=c.BatchConfig(prompts_per_step=4, rows_per_optimizer_step=4, rows_per_micro_batch=4),
                       validation=c.ValidationConfig(every_steps=2, num_problems=4))
  phase = config.phases[0]
  return dataclasses.replace(config, phases=(dataclasses.replace(
      phase, loss=dataclasses.replace(phase.loss, temperature=0.8)),))


def lenient_scorer(responses, truths):
  """A deterministic stand-in verifier that a random model passes about one time in four.

  The verifier would score every rollout of an untrained model 0, and the γ = 0 gate would then
  send every question to its demonstration; this one yields both RL and SFT questions.
  """
  scores = [float(zlib.crc32(f"{r}|{t}".encode()) % 4 == 0) for r, t in zip(responses, truths)]
  return np.asarray(scores, np.float64), 0


def multiprocess_data(config, workdir):
  """The built-in task of `config`, rewarded by `lenient_scorer`."""
  from hpt_jax.training.data_source import load_training_data
  return load_training_data(config, pathlib.Path(workdir), scorer=lenient_scorer)
