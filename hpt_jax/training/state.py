"""The train state: parameters, optimizer state, gate state, step, PRNG key — one checkpointable pytree.

Parameters are a plain nested dict of arrays (`nnx.to_pure_dict` of the model's `nnx.Param` state),
the fp32 master copy; the model's graph definition lives outside the state (it has no arrays).
On accelerators the model config computes in bf16 (`DTypePolicy.BFLOAT16`) while the master
weights and the AdamW moments stay fp32: `create_train_state` initialises from the fp32 twin of the
config, and the step casts the master weights to the model's dtype inside the loss.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from hpt_jax.hybrid.state import GateState
from hpt_jax.models import CausalLM, DTypePolicy, ModelConfig
from hpt_jax.training import mesh as mesh_lib
from hpt_jax.typing import Array, PRNGKey


class TrainState(NamedTuple):
  step: Array  # int32 [], optimizer updates attempted (skipped ones included)
  params: dict  # nested dict of fp32 arrays (master weights)
  opt_state: optax.OptState  # `optimizer.SkipState` around clip → AdamW
  gate_state: GateState | None  # host NumPy arrays (None for runs without a gate)
  rng: PRNGKey


def model_graphdef(config: ModelConfig) -> nnx.GraphDef:
  """The graph definition of `CausalLM(config)` (no parameters materialised)."""
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: CausalLM(config, rngs=nnx.Rngs(0))), nnx.Param)
  return graphdef


def abstract_params(config: ModelConfig) -> tuple[nnx.State, dict]:
  """(abstract nnx.State, abstract pure dict) of the fp32 master parameters."""
  master = config.replace(dtype_policy=DTypePolicy.FLOAT32)
  _, state = nnx.split(nnx.eval_shape(lambda: CausalLM(master, rngs=nnx.Rngs(0))), nnx.Param)
  return state, nnx.to_pure_dict(state)


@functools.lru_cache(maxsize=32)
def init_programs(config: ModelConfig, optimizer: optax.GradientTransformation,
                  mesh: Mesh | None) -> tuple[Any, Any, Any]:
  """The jitted (random init, adopt, optimizer init) programs of one (model, optimizer, mesh).

  Built once per process and keyed on their static inputs only: the seed and the adopted arrays
  are arguments, not closure constants, so a second `create_train_state` (a resume, a sweep, a
  test) reuses the compiled programs instead of tracing a fresh closure.

  Returns:
    `random_init(seed: int32 []) -> params`, `adopt(params) -> fp32 params`,
    `opt_init(params) -> opt_state`, each placing its outputs on `mesh` (or the default device).
  """
  master = config.replace(dtype_policy=DTypePolicy.FLOAT32)

  def random_init(seed):
    # A traced seed: nnx.Rngs takes it as a typed key (an int would be a compile-time constant).
    _, state = nnx.split(CausalLM(master, rngs=nnx.Rngs(jax.random.key(seed))), nnx.Param)
    return nnx.to_pure_dict(state)

  def adopt(params):
    return jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params)

  if mesh is None:
    return jax.jit(random_init), jax.jit(adopt), jax.jit(optimizer.init)
  abstract_state, abstract_pure = abstract_params(config)
  p_shard = mesh_lib.param_shardings(abstract_state, mesh)
  o_shard = mesh_lib.opt_state_shardings(optimizer, abstract_pure, p_shard, mesh)
  return (jax.jit(random_init, out_shardings=p_shard), jax.jit(adopt, out_shardings=p_shard),
          jax.jit(optimizer.init, out_shardings=o_shard))


def create_train_state(config: ModelConfig, optimizer: optax.GradientTransformation, *, seed: int,
                       mesh: Mesh | None = None, params: dict | None = None,
                       gate_state: GateState | None = None) -> TrainState:
  """Initialises (or adopts `params`) and places the whole state on `mesh`.

  Parameters and optimizer state are sharded by the rules table; `step` and `rng` are replicated
  over the mesh, placed as the train step returns them, so the first update compiles the same
  program as every later one.

  Args:
    config: the model config (its dtype policy is the compute dtype; masters are fp32 regardless).
    optimizer: e.g. `optimizer.make_optimizer(OptimConfig())`.
    seed: seeds parameter init (when `params` is None) and the state's PRNG key.
    mesh: shard parameters/optimizer state by the rules table (None: default device).
    params: pure-dict parameters to start from (e.g. imported HF weights); cast to fp32.
    gate_state: the gate's state, carried along for checkpointing.
  """
  random_init, adopt, opt_init = init_programs(config, optimizer, mesh)
  if params is None:
    p = random_init(np.int32(seed))
  else:
    p = adopt(params)
  opt_state = opt_init(p)
  step = np.zeros((), np.int32)
  rng = np.asarray(jax.random.key_data(jax.random.key(seed)))
  if mesh is None:
    step, rng = jnp.asarray(step), jnp.asarray(rng)
  else:
    # Every host holds the same value; each contributes its devices' (full) copies.
    rep = mesh_lib.replicated(mesh)
    step, rng = (jax.make_array_from_callback(x.shape, rep, lambda index, x=x: x[index]) for x in (step, rng))
  return TrainState(step=step, params=p, opt_state=opt_state, gate_state=gate_state, rng=rng)


def state_shardings(optimizer: optax.GradientTransformation, config: ModelConfig,
                    mesh: Mesh) -> Any:
  """Shardings of `params` and `opt_state` (for restoring a checkpoint straight onto the mesh)."""
  abstract_state, abstract_pure = abstract_params(config)
  p_shard = mesh_lib.param_shardings(abstract_state, mesh)
  return p_shard, mesh_lib.opt_state_shardings(optimizer, abstract_pure, p_shard, mesh)
