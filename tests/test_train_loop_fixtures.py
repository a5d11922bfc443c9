"""Tiny runs for the loop tests: the built-in arithmetic task at level 1 and a 1-layer model.

Imported by tests/test_train_loop*.py and by the multi-process test's child script.
"""

import dataclasses
import pathlib

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
  """2 SFT steps on a data=4 mesh (2 processes x 2 devices, or 1 process x 4 devices).

  The SFT phase trains on demonstrations only, so the step's rows depend on the data order alone.
  """
  from hpt_jax.training.mesh import MeshConfig
  return tiny_config(pathlib.Path(builtin_dir), steps=2, algorithm="sft", mesh=MeshConfig(data=4))
