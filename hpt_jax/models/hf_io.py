"""Hugging Face checkpoint import (save_pretrained directory -> CausalLM) and export (the reverse).

Import is exhaustive and checked before any data is read: every HF tensor must be claimed by a rule
of the family's table (`hf_keys.KEY_TABLES`), every parameter of our model must be filled, and every
shape must match; otherwise one `CheckpointError` lists all offending keys. Each parameter is then
built with `jax.make_array_from_callback` directly in its target sharding: the callback reads only
the requested device slice from the memory-mapped safetensors, so no host holds a full unsharded copy.

Export writes config.json (through `transformers.AutoConfig`, so the file is in the layout the
installed transformers expects), safetensors shards (+ index when more than one), and copies the
tokenizer files of `tokenizer_dir` when given.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from hpt_jax.models import hf_keys, safetensors_io
from hpt_jax.models.config import ModelConfig
from hpt_jax.models.factory import abstract_model
from hpt_jax.models.sharding import param_shardings
from hpt_jax.models.transformer import CausalLM

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "added_tokens.json", "tokenizer.model",
                   "chat_template.jinja", "generation_config.json")


class CheckpointError(ValueError):
  """A checkpoint directory that does not match the model (lists every offending key)."""


def read_hf_config(path: str | os.PathLike) -> dict[str, Any]:
  config_path = os.path.join(path, CONFIG_FILE)
  if not os.path.isfile(config_path):
    raise CheckpointError(f"{path}: no {CONFIG_FILE}")
  with open(config_path) as f:
    return json.load(f)


def open_tensors(path: str | os.PathLike) -> dict[str, safetensors_io.SafetensorsFile]:
  """Maps every tensor name of a checkpoint directory to its (lazily opened) safetensors file."""
  index_path = os.path.join(path, INDEX_FILE)
  if os.path.isfile(index_path):
    with open(index_path) as f:
      files = sorted(set(json.load(f)["weight_map"].values()))
  elif os.path.isfile(os.path.join(path, SINGLE_FILE)):
    files = [SINGLE_FILE]
  else:
    raise CheckpointError(f"{path}: neither {SINGLE_FILE} nor {INDEX_FILE}")
  tensors: dict[str, safetensors_io.SafetensorsFile] = {}
  for name in files:
    handle = safetensors_io.SafetensorsFile(os.path.join(path, name))
    for key in handle.keys():
      if key in tensors:
        raise CheckpointError(f"{path}: tensor {key!r} appears in two files")
      tensors[key] = handle
  return tensors


@dataclasses.dataclass(frozen=True)
class _Binding:
  """One of our parameters and the HF tensor(s) that fill it (one per layer when stacked)."""
  rule: hf_keys.KeyRule
  path: tuple[str, ...]
  sources: tuple[str, ...]  # HF tensor names, one per layer for stacked parameters
  shape: tuple[int, ...]


def _bind(config: ModelConfig, shapes: dict[tuple[str, ...], tuple[int, ...]],
          hf_shapes: dict[str, tuple[int, ...]], where: str) -> list[_Binding]:
  """Matches the family's table against our parameters and the checkpoint; raises on any mismatch."""
  bindings, missing, wrong_shape = [], [], []
  for rule in hf_keys.KEY_TABLES[config.family]:
    if rule.path not in shapes:
      continue  # parameter not created by this config (disabled bias, tied lm_head)
    shape = shapes[rule.path]
    keys = tuple(rule.hf_key.format(i=i) for i in range(shape[0])) if rule.stacked else (rule.hf_key,)
    expected = rule.hf_shape(shape)
    for key in keys:
      if key not in hf_shapes:
        missing.append(key)
      elif hf_shapes[key] != expected:
        wrong_shape.append(f"{key}: checkpoint {hf_shapes[key]}, model expects {expected}")
    bindings.append(_Binding(rule, rule.path, keys, shape))
  claimed = {key for b in bindings for key in b.sources}
  unexpected = sorted(set(hf_shapes) - claimed)
  unfilled = sorted(set(shapes) - {b.path for b in bindings})
  problems = []
  if missing:
    problems.append(f"missing tensors: {missing}")
  if wrong_shape:
    problems.append(f"shape mismatches: {wrong_shape}")
  if unexpected:
    problems.append(f"unexpected tensors (not used by a {config.family.value} model with this "
                    f"config): {unexpected}")
  if unfilled:
    problems.append(f"parameters with no {config.family.value} mapping rule: "
                    f"{['.'.join(p) for p in unfilled]}")
  if problems:
    raise CheckpointError(f"{where}: " + "; ".join(problems))
  return bindings


def _letter_index(rule: hf_keys.KeyRule, index: Sequence[slice]) -> dict[str, slice]:
  """Our global index (one slice per dim, the first over layers when stacked) -> letter -> slice."""
  letters = hf_keys.Layout.parse(rule.our_layout).letters
  per_layer = tuple(index[1:]) if rule.stacked else tuple(index)
  return dict(zip(letters, per_layer))


def _read_block(binding: _Binding, tensors, index: Sequence[slice], dtype) -> np.ndarray:
  """Our global slice `index` of one parameter, read from the checkpoint."""
  rule = binding.rule
  sizes = rule.sizes(binding.shape)
  letter_index = _letter_index(rule, index)
  if not rule.stacked:
    key = binding.sources[0]
    return hf_keys.to_ours(rule, tensors[key].tensor(key), sizes, letter_index).astype(dtype)
  layers = range(*index[0].indices(binding.shape[0]))
  return np.stack([
      hf_keys.to_ours(rule, tensors[binding.sources[i]].tensor(binding.sources[i]), sizes,
                      letter_index).astype(dtype)
      for i in layers])


def load_pretrained(path: str | os.PathLike, *, mesh: jax.sharding.Mesh | None = None,
                    **config_overrides: Any) -> CausalLM:
  """Loads a `save_pretrained` directory (single or sharded safetensors) into a CausalLM.

  Args:
    path: the checkpoint directory.
    mesh: place each parameter with its `sharding.param_shardings` on this mesh; default: the
      first device.
    **config_overrides: ModelConfig fields to replace (e.g. `rope_theta=40000.0`,
      `dtype_policy=DTypePolicy.BFLOAT16`, `remat=RematPolicy.FULL`).
  """
  config = ModelConfig.from_hf_config(read_hf_config(path), **config_overrides)
  tensors = open_tensors(path)
  graphdef, abs_state = nnx.split(abstract_model(config))
  if mesh is None:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shardings = jax.tree.map(lambda _: device, abs_state)
  else:
    shardings = param_shardings(abs_state, mesh)
  flat = nnx.to_flat_state(abs_state)
  flat_shardings = dict(nnx.to_flat_state(shardings))
  shapes = {tuple(p): tuple(v.shape) for p, v in flat}
  hf_shapes = {key: handle.shape(key) for key, handle in tensors.items()}
  bindings = {b.path: b for b in _bind(config, shapes, hf_shapes, os.fspath(path))}

  filled = []
  for p, variable in flat:
    binding = bindings[tuple(p)]
    sharding = flat_shardings[p]
    sharding = sharding.get_value() if isinstance(sharding, nnx.Variable) else sharding
    array = jax.make_array_from_callback(
        variable.shape, sharding,
        lambda index, b=binding, dt=variable.dtype: _read_block(b, tensors, index, dt))
    filled.append((p, variable.replace(array)))
  return nnx.merge(graphdef, nnx.from_flat_state(filled))


def _to_host(x: jax.Array) -> np.ndarray:
  """The full array on the host, assembled from its shards (no device computation, no compile)."""
  if not x.is_fully_addressable:
    x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(x)


class _HostCopy:
  """Holds the host copy of the parameter being written, so its L layers cost one transfer.

  Peak host memory of an export is therefore one stacked parameter (e.g. the 7B MLP gate,
  [28, 3584, 18944]) plus one output tensor.
  """

  def __init__(self):
    self._source, self._value = None, None

  def __call__(self, array: jax.Array) -> np.ndarray:
    if self._source is not array:
      self._source, self._value = array, None  # drop the previous copy before making the next
      self._value = _to_host(array)
    return self._value


def save_pretrained(model: CausalLM, path: str | os.PathLike, *,
                    tokenizer_dir: str | os.PathLike | None = None, dtype=None,
                    max_shard_bytes: int = 5 * 2**30) -> None:
  """Writes `model` as an HF checkpoint directory that `AutoModelForCausalLM.from_pretrained` loads.

  Args:
    model: the model (e.g. `nnx.merge(graphdef, params)` after training).
    path: output directory (created).
    tokenizer_dir: a directory whose tokenizer files (TOKENIZER_FILES) are copied alongside.
    dtype: tensor dtype to write (default: the parameter dtype), e.g. `jnp.bfloat16` for serving.
    max_shard_bytes: safetensors files are split at this size (index written when > 1 file).
  """
  import transformers  # deferred: only export needs it

  config = model.config
  dtype = np.dtype(dtype or config.param_dtype)
  state = nnx.state(model, nnx.Param)
  flat = {tuple(p): v for p, v in nnx.to_flat_state(state)}
  entries, covered, host = [], set(), _HostCopy()
  for rule in hf_keys.KEY_TABLES[config.family]:
    if rule.path not in flat:
      continue
    array = flat[rule.path].get_value()
    covered.add(rule.path)
    layers = range(array.shape[0]) if rule.stacked else [None]
    for i in layers:
      key = rule.hf_key.format(i=i) if rule.stacked else rule.hf_key
      def produce(array=array, i=i, rule=rule):
        value = host(array)
        return hf_keys.to_hf(rule, value if i is None else value[i]).astype(dtype)
      entries.append((key, rule.hf_shape(array.shape), dtype, produce))
  if covered != set(flat):
    raise CheckpointError(f"no export rule for parameters "
                          f"{sorted('.'.join(p) for p in set(flat) - covered)}")

  shards, current, size = [], [], 0
  for entry in entries:
    nbytes = safetensors_io.tensor_nbytes(entry[1], dtype)
    if current and size + nbytes > max_shard_bytes:
      shards.append(current)
      current, size = [], 0
    current.append(entry)
    size += nbytes
  shards.append(current)

  if jax.process_index() != 0:
    for entry in entries:  # every process joins the gathers, only process 0 writes
      entry[3]()
    return
  os.makedirs(path, exist_ok=True)
  hf_config = config.to_hf_config()
  hf_config["dtype"] = dtype.name
  transformers.AutoConfig.for_model(**hf_config).save_pretrained(path)
  if len(shards) == 1:
    safetensors_io.write_file(os.path.join(path, SINGLE_FILE), shards[0])
  else:
    weight_map = {}
    for n, shard in enumerate(shards, start=1):
      name = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
      safetensors_io.write_file(os.path.join(path, name), shard)
      weight_map.update({entry[0]: name for entry in shard})
    total = sum(safetensors_io.tensor_nbytes(e[1], dtype) for e in entries)
    with open(os.path.join(path, INDEX_FILE), "w") as f:
      json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
  if tokenizer_dir is not None:
    copied = [name for name in TOKENIZER_FILES
              if os.path.isfile(os.path.join(tokenizer_dir, name))]
    if not copied:
      raise FileNotFoundError(f"tokenizer_dir {tokenizer_dir}: none of {TOKENIZER_FILES}")
    for name in copied:
      shutil.copy(os.path.join(tokenizer_dir, name), os.path.join(path, name))
