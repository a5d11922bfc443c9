"""`create_train_state`: every leaf placed on the mesh (step and rng replicated), parameters equal to an
eager init of the same seed, and one compiled init program per (model, optimizer, mesh)."""

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from hpt_jax.models import CausalLM, presets
from hpt_jax.training import state as state_lib
from hpt_jax.training.mesh import MeshConfig
from hpt_jax.training.optimizer import OptimConfig, make_optimizer

CFG = presets.tiny(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16,
                   vocab_size=64, max_position_embeddings=32)


def _reference_params(seed):
  # The reference: the model built with a constant integer seed on one device (fp32 masters).
  def init():
    _, st = nnx.split(CausalLM(CFG, rngs=nnx.Rngs(seed)), nnx.Param)
    return nnx.to_pure_dict(st)
  return jax.device_get(jax.jit(init)())


def test_state_is_placed_on_the_mesh_and_init_compiles_once():
  mesh = MeshConfig(fsdp=2, tensor=2).build()
  optimizer = make_optimizer(OptimConfig())
  random_init, adopt, opt_init = state_lib.init_programs(CFG, optimizer, mesh)
  states = [state_lib.create_train_state(CFG, optimizer, seed=s, mesh=mesh) for s in (0, 1)]
  # A different seed is an argument of the same program, not a new closure to trace and compile.
  assert random_init._cache_size() == 1 and opt_init._cache_size() == 1
  ref = _reference_params(0)
  for a, b in zip(jax.tree.leaves(states[0].params), jax.tree.leaves(ref), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
  for seed, st in zip((0, 1), states):
    rep = NamedSharding(mesh, PartitionSpec())
    for leaf in (st.step, st.rng):
      assert isinstance(leaf.sharding, NamedSharding) and leaf.sharding.mesh == mesh
      assert leaf.sharding.is_equivalent_to(rep, leaf.ndim)
    assert int(st.step) == 0
    np.testing.assert_array_equal(np.asarray(st.rng), np.asarray(jax.random.key_data(jax.random.key(seed))))
    # Parameters and optimizer moments live on the mesh too (the rules table's shardings).
    assert all(leaf.sharding.mesh == mesh for leaf in jax.tree.leaves((st.params, st.opt_state))
               if isinstance(leaf, jax.Array) and isinstance(leaf.sharding, NamedSharding))
    assert any(not leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(st.params))
  assert not np.allclose(np.asarray(jax.tree.leaves(states[0].params)[0]),
                         np.asarray(jax.tree.leaves(states[1].params)[0]))
  # Adopting given weights: cast to fp32 and placed, one program for any values of those shapes.
  for scale in (1.0, 2.0):
    given = jax.tree.map(lambda x: (np.asarray(x) * scale).astype(np.float16), ref)
    st = state_lib.create_train_state(CFG, optimizer, seed=0, mesh=mesh, params=given)
    for a, b in zip(jax.tree.leaves(st.params), jax.tree.leaves(given), strict=True):
      assert a.dtype == np.float32
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b, np.float32))
  assert adopt._cache_size() == 1
