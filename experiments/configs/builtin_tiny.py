"""The default run: HPT on the built-in arithmetic task with the tiny model, sized for 2 CPU cores.

The tiny preset (vocab 512, width 256, 4 layers) is trained from random weights on generated
arithmetic problems whose demonstrations end in \\boxed{answer}; the gate sends unsolved questions
to SFT, so early steps are mostly SFT and RL takes over as the model starts solving problems.
"""

from hpt_jax.models import presets
from hpt_jax.training import config as c

_RESPONSE = 96


def get_config() -> c.TrainConfig:
  loss, rows = c.baseline("hpt", width=_RESPONSE)
  return c.TrainConfig(
      model=c.ModelSource(config=presets.tiny(max_position_embeddings=256)),
      data=c.DataConfig(builtin_problems=4096, builtin_levels=(1, 2, 3), max_prompt_length=64,
                        max_response_length=_RESPONSE),
      sampling=c.SamplingConfig(rollouts_per_prompt=8, prompt_buckets=(32, 64),
                                response_buckets=(_RESPONSE,)),
      gate=c.GateConfig(gamma_count=0),
      batch=c.BatchConfig(prompts_per_step=16, rows_per_optimizer_step=64, rows_per_micro_batch=32),
      optim=c.OptimConfig(learning_rate=1e-3, weight_decay=0.0, skip_above_norm=None),
      phases=(c.Phase(loss=loss, rows=rows, steps=60),),
      validation=c.ValidationConfig(every_steps=20, before_training=True, num_problems=64,
                                    samples_per_problem=1),
      checkpoint=c.CheckpointConfig(every_steps=20, keep_last=2, keep_best=1),
  )
