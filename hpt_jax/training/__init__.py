"""Training: batch packing, the optimizer, the sharded train step, the loop and checkpoints."""

from hpt_jax.training.batching import MicroBatches, PackConfig, Rows, pack
from hpt_jax.training.optimizer import OptimConfig, Schedule, make_optimizer
