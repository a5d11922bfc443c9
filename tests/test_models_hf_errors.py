"""Corrupted or mismatched checkpoints fail with an error that names the offending key."""

import json
import shutil

import numpy as np
import pytest

from hpt_jax.models import hf_io, presets, safetensors_io
from hpt_jax.models.testing import random_model

Q_WEIGHT = "model.layers.1.self_attn.q_proj.weight"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  """A valid 2-layer tiny Qwen2 checkpoint written by our exporter."""
  path = tmp_path_factory.mktemp("ckpt") / "good"
  config = presets.tiny(num_layers=2, hidden_size=64, intermediate_size=96, num_heads=4,
                        num_kv_heads=2, head_dim=16, vocab_size=64)
  hf_io.save_pretrained(random_model(config), path)
  return path


def _rewrite(src, dst, edit):
  """Copies checkpoint `src` to `dst`, passing its {name: array} through `edit` first."""
  shutil.copytree(src, dst)
  handle = safetensors_io.SafetensorsFile(src / hf_io.SINGLE_FILE)
  tensors = edit({name: np.array(handle.tensor(name)) for name in handle.keys()})
  safetensors_io.write_file(dst / hf_io.SINGLE_FILE,
                            [(k, v.shape, v.dtype, lambda v=v: v) for k, v in tensors.items()])
  return dst


def test_valid_checkpoint_loads(checkpoint):
  model = hf_io.load_pretrained(checkpoint)
  assert model.config.num_layers == 2


def test_missing_tensor_is_named(checkpoint, tmp_path):
  def drop(tensors):
    del tensors[Q_WEIGHT]
    return tensors
  with pytest.raises(hf_io.CheckpointError, match=rf"missing tensors: \['{Q_WEIGHT}'\]"):
    hf_io.load_pretrained(_rewrite(checkpoint, tmp_path / "bad", drop))


def test_wrong_shape_is_named(checkpoint, tmp_path):
  def truncate(tensors):
    tensors[Q_WEIGHT] = np.ascontiguousarray(tensors[Q_WEIGHT][:, :32])
    return tensors
  with pytest.raises(hf_io.CheckpointError,
                     match=rf"{Q_WEIGHT}: checkpoint \(64, 32\), model expects \(64, 64\)"):
    hf_io.load_pretrained(_rewrite(checkpoint, tmp_path / "bad", truncate))


def test_unknown_extra_tensor_is_named(checkpoint, tmp_path):
  def add(tensors):
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.zeros(8, np.float32)
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]  # tied model: not expected
    return tensors
  with pytest.raises(hf_io.CheckpointError) as info:
    hf_io.load_pretrained(_rewrite(checkpoint, tmp_path / "bad", add))
  assert "unexpected tensors" in str(info.value)
  assert "'lm_head.weight'" in str(info.value)
  assert "'model.layers.0.self_attn.rotary_emb.inv_freq'" in str(info.value)


def test_unknown_model_type_is_named(checkpoint, tmp_path):
  bad = tmp_path / "bad"
  shutil.copytree(checkpoint, bad)
  config = json.loads((bad / "config.json").read_text())
  config["model_type"] = "gpt_neox"
  (bad / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match="unsupported model_type 'gpt_neox'"):
    hf_io.load_pretrained(bad)


def test_missing_files_are_reported(checkpoint, tmp_path):
  bad = tmp_path / "bad"
  shutil.copytree(checkpoint, bad)
  (bad / hf_io.SINGLE_FILE).unlink()
  with pytest.raises(hf_io.CheckpointError, match="neither model.safetensors nor"):
    hf_io.load_pretrained(bad)
  with pytest.raises(hf_io.CheckpointError, match="no config.json"):
    hf_io.load_pretrained(tmp_path)


def test_bfloat16_export_reads_back_exactly(checkpoint, tmp_path):
  """bf16 tensors (how published checkpoints are stored): our writer vs the `safetensors` library
  as an independent reader, and our reader back into a float32 model."""
  import jax.numpy as jnp
  import ml_dtypes
  import torch
  from safetensors.torch import load_file

  model = hf_io.load_pretrained(checkpoint)
  hf_io.save_pretrained(model, tmp_path / "bf16", dtype=jnp.bfloat16)
  assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
  reference = load_file(tmp_path / "bf16" / hf_io.SINGLE_FILE)
  ours = safetensors_io.SafetensorsFile(tmp_path / "bf16" / hf_io.SINGLE_FILE)
  assert set(reference) == set(ours.keys())
  for key, tensor in reference.items():
    assert tensor.dtype == torch.bfloat16, key
    np.testing.assert_array_equal(ours.tensor(key).astype(np.float32), tensor.float().numpy())

  reloaded = hf_io.load_pretrained(tmp_path / "bf16")
  want = np.asarray(model.layers.self_attn.q_proj.kernel.get_value())
  got = np.asarray(reloaded.layers.self_attn.q_proj.kernel.get_value())
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, want.astype(ml_dtypes.bfloat16).astype(np.float32))
  assert np.abs(got - want).max() > 0  # the rounding really happened
