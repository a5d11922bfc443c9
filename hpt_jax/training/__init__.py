"""Training: batch packing, the optimizer, the sharded train step, the loop and checkpoints."""

from hpt_jax.training.batching import MicroBatches, PackConfig, Rows, pack
from hpt_jax.training.mesh import MeshConfig
from hpt_jax.training.optimizer import OptimConfig, Schedule, make_optimizer
from hpt_jax.training.state import TrainState, create_train_state
from hpt_jax.training.train_step import TrainStep, make_train_step
from hpt_jax.training.checkpoint import CheckpointConfig, Checkpointer
from hpt_jax.training.config import Phase, RowSource, TrainConfig, baseline, build_config, validate
from hpt_jax.training.loop import RunSummary, train
