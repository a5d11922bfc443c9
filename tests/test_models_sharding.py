"""Sharding: the rules table, parameter placement, and forward equality on an 8-device CPU mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from hpt_jax.models import hf_io, init_cache, presets, safetensors_io, sharding
from hpt_jax.models.factory import init_model
from hpt_jax.models.testing import padded_batch, random_model, valid_max_abs_diff


def test_logical_to_spec_follows_rules_and_drops_indivisible_axes():
  sizes = {"data": 2, "fsdp": 4, "tensor": 2}
  # Hand-derived from LOGICAL_RULES: embed -> fsdp, heads -> tensor, layers/head_dim replicated.
  assert sharding.logical_to_spec(("layers", "embed", "heads", "head_dim"), (3, 8, 4, 16),
                                  sizes) == P(None, "fsdp", "tensor", None)
  # Batch goes over data x fsdp when 8 divides it, over data alone when only 2 does.
  assert sharding.logical_to_spec(("act_batch", "act_length"), (16, 5), sizes) == P(("data", "fsdp"), None)
  assert sharding.logical_to_spec(("act_batch", "act_length"), (6, 5), sizes) == P("data", None)
  # 3 KV heads cannot be split over tensor=2: replicated instead of an error.
  assert sharding.logical_to_spec(("embed", "kv_heads"), (8, 3), sizes) == P("fsdp", None)
  with pytest.raises(KeyError, match="'nonsense'"):
    sharding.logical_to_spec(("nonsense",), (4,), sizes)
  with pytest.raises(ValueError, match="8 devices"):
    sharding.make_mesh(data=1, fsdp=2, tensor=2)


def test_forward_on_fsdp4_tensor2_mesh_equals_single_device(tmp_path):
  config = presets.tiny(num_layers=2)
  model = random_model(config, seed=2)
  graphdef, params = nnx.split(model)
  tokens, positions, mask = padded_batch(np.random.default_rng(2), vocab_size=config.vocab_size,
                                         length=12, left_pad=[0, 3, 1, 0], right_pad=[2, 0, 0, 0])
  mesh = sharding.make_mesh(fsdp=4, tensor=2)

  def forward(params, tokens, positions, mask):
    model = nnx.merge(graphdef, params)
    hidden, _ = model(tokens, positions=positions, attention_mask=mask)
    return model.logits(hidden)

  single = jax.jit(forward)(params, tokens, positions, mask)

  shardings = sharding.param_shardings(params, mesh)
  sharded_params = jax.device_put(params, shardings)
  q_kernel = sharded_params["layers"]["self_attn"]["q_proj"]["kernel"].get_value()
  assert q_kernel.sharding.spec == P(None, "fsdp", "tensor", None)
  assert q_kernel.addressable_shards[0].data.shape == (2, 64, 4, 32)  # [L, D/4, N/2, H]
  embedding = sharded_params["embed_tokens"]["embedding"].get_value()
  assert embedding.sharding.spec == P("tensor", "fsdp")
  batch_sharding = jax.sharding.NamedSharding(mesh, P(("data", "fsdp"), None))
  inputs = [jax.device_put(jnp.asarray(x), batch_sharding) for x in (tokens, positions, mask)]
  with jax.set_mesh(mesh):
    sharded = jax.jit(forward)(sharded_params, *inputs)
  assert len(sharded.sharding.device_set) == 8
  assert valid_max_abs_diff(sharded, single, mask) <= 1e-5

  # The importer places each parameter straight into its mesh sharding, same values.
  hf_io.save_pretrained(model, tmp_path / "ckpt")
  loaded_model = hf_io.load_pretrained(tmp_path / "ckpt", mesh=mesh)
  loaded = nnx.state(loaded_model)
  for (path, want), (_, got) in zip(nnx.to_flat_state(shardings), nnx.to_flat_state(loaded)):
    got = got.get_value()
    assert got.sharding.is_equivalent_to(want.get_value(), got.ndim), path
  np.testing.assert_array_equal(
      np.asarray(loaded["layers"]["mlp"]["down_proj"]["kernel"].get_value()),
      np.asarray(params["layers"]["mlp"]["down_proj"]["kernel"].get_value()))

  # Exporting the mesh-sharded model writes the same tensors as the single-device export.
  hf_io.save_pretrained(loaded_model, tmp_path / "again")
  first = safetensors_io.SafetensorsFile(tmp_path / "ckpt" / hf_io.SINGLE_FILE)
  second = safetensors_io.SafetensorsFile(tmp_path / "again" / hf_io.SINGLE_FILE)
  assert first.keys() == second.keys()
  for key in first.keys():
    np.testing.assert_array_equal(first.tensor(key), second.tensor(key), err_msg=key)


def test_cache_shardings_cover_every_field():
  config = presets.tiny(num_layers=2)
  mesh = sharding.make_mesh(fsdp=4, tensor=2)
  cache = init_cache(config, batch=8, length=16)
  placed = jax.device_put(cache, sharding.cache_shardings(cache, mesh))
  # data has size 1 on this mesh, so only fsdp appears in the batch entry.
  assert placed.k[1].sharding.spec == P("fsdp", "tensor", None, None)
  assert placed.key_mask.sharding.spec == P("fsdp", None)
  # Keys are stored [B, K, H, S], values [B, K, S, H]: each shard holds whole heads and slots.
  assert placed.k[1].addressable_shards[0].data.shape == (2, 1, 32, 16)
  assert placed.v[1].sharding.spec == P("fsdp", "tensor", None, None)
  assert placed.v[1].addressable_shards[0].data.shape == (2, 1, 16, 32)


# Slow only because XLA:CPU compiles the threefry normal draws of every parameter (~15 s here).
@pytest.mark.slow
def test_init_model_materialises_each_shard_in_place():
  config = presets.tiny(num_layers=1, hidden_size=64, intermediate_size=96, num_heads=4,
                        num_kv_heads=2, head_dim=16, vocab_size=64)
  mesh = sharding.make_mesh(fsdp=4, tensor=2)
  params = nnx.state(init_model(config, seed=0, mesh=mesh))
  want = sharding.param_shardings(params, mesh)
  for (path, got), (_, spec) in zip(nnx.to_flat_state(params), nnx.to_flat_state(want)):
    assert got.get_value().sharding.is_equivalent_to(spec.get_value(), got.get_value().ndim), path
  # HF-style init: N(0, 0.02) kernels, zero biases, unit norm scales.
  gate = np.asarray(params["layers"]["mlp"]["gate_proj"]["kernel"].get_value())
  assert abs(gate.std() - 0.02) < 0.002 and abs(gate.mean()) < 0.002
  assert not np.asarray(params["layers"]["self_attn"]["q_proj"]["bias"].get_value()).any()
  np.testing.assert_array_equal(np.asarray(params["norm"]["scale"].get_value()), 1.0)


def test_import_reads_only_each_devices_slice(tmp_path, monkeypatch):
  config = presets.tiny(num_layers=2, hidden_size=64, intermediate_size=96, num_heads=4,
                        num_kv_heads=2, head_dim=16, vocab_size=64)
  hf_io.save_pretrained(random_model(config), tmp_path)
  blocks = {}
  read_block = hf_io._read_block

  def recording(binding, tensors, index, dtype):
    block = read_block(binding, tensors, index, dtype)
    blocks.setdefault(binding.path, set()).add(block.shape)
    return block

  monkeypatch.setattr(hf_io, "_read_block", recording)
  hf_io.load_pretrained(tmp_path, mesh=sharding.make_mesh(fsdp=4, tensor=2))
  # q_proj [L, D, N, H] = [2, 64, 4, 16] split fsdp=4 on D and tensor=2 on N: every read is a shard.
  assert blocks[("layers", "self_attn", "q_proj", "kernel")] == {(2, 16, 2, 16)}
  assert blocks[("embed_tokens", "embedding")] == {(32, 16)}  # [V/2, D/4]
  assert blocks[("norm", "scale")] == {(64,)}  # replicated
