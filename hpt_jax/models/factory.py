"""Building models: abstract (shapes only), or initialised in one compiled program, optionally sharded.

Eager NNX construction dispatches every initialiser op separately (seconds for even the tiny model);
`init_model` runs the constructor under `jax.jit` instead, and with a mesh gives the jit the target
parameter shardings as `out_shardings`, so each device materialises only its own shard.
"""

from __future__ import annotations

import jax
from flax import nnx

from hpt_jax.models.config import ModelConfig
from hpt_jax.models.sharding import param_shardings
from hpt_jax.models.transformer import CausalLM


def abstract_model(config: ModelConfig) -> CausalLM:
  """A CausalLM whose parameters are ShapeDtypeStructs (with logical_axes metadata)."""
  return nnx.eval_shape(lambda: CausalLM(config, rngs=nnx.Rngs(0)))


def init_model(config: ModelConfig, *, seed: int = 0,
               mesh: jax.sharding.Mesh | None = None) -> CausalLM:
  """A randomly initialised CausalLM (HF-style init: normal(0.02) kernels, zero biases, unit norms)."""
  graphdef, abstract_state = nnx.split(abstract_model(config))

  def make():
    return nnx.split(CausalLM(config, rngs=nnx.Rngs(seed)))[1]

  out_shardings = None if mesh is None else param_shardings(abstract_state, mesh)
  state = jax.jit(make, out_shardings=out_shardings)()
  return nnx.merge(graphdef, state)
