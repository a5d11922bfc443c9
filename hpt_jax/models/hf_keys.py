"""Declarative HF <-> hpt_jax parameter tables, one per model family, and the layout algebra.

Each `KeyRule` says: the HF tensor `hf_key` (with `{i}` = layer index for stacked layers) holds our
parameter at `path`, in the HF axis layout `hf_layout`, while ours is `our_layout`. Layouts are
einops-like letter strings; a parenthesised group is one HF axis that we keep split, e.g. q_proj's HF
weight is `"(n h) d"` (rows = heads x head_dim, columns = model width) and ours is `"d n h"`.
Letter sizes come from our parameter's shape, so the same rule serves every model size.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Mapping, Sequence

import numpy as np

from hpt_jax.models.config import ModelFamily


@dataclasses.dataclass(frozen=True)
class Layout:
  """Parsed axis layout: `groups` is one tuple of letters per HF axis (ours: one letter each)."""
  groups: tuple[tuple[str, ...], ...]

  @classmethod
  def parse(cls, text: str) -> "Layout":
    groups = [tuple(g.strip("()").split()) for g in re.findall(r"\([^)]*\)|\S+", text)]
    return cls(tuple(groups))

  @property
  def letters(self) -> tuple[str, ...]:
    return tuple(letter for group in self.groups for letter in group)

  def shape(self, sizes: Mapping[str, int]) -> tuple[int, ...]:
    return tuple(int(np.prod([sizes[letter] for letter in group])) for group in self.groups)


@dataclasses.dataclass(frozen=True)
class KeyRule:
  hf_key: str              # e.g. "model.layers.{i}.self_attn.q_proj.weight"
  path: tuple[str, ...]    # our nnx state path, e.g. ("layers", "self_attn", "q_proj", "kernel")
  hf_layout: str
  our_layout: str          # per layer (without the stacked `layers` axis)

  @property
  def stacked(self) -> bool:
    return "{i}" in self.hf_key

  def sizes(self, our_shape: Sequence[int]) -> dict[str, int]:
    """Letter sizes from our (stacked) parameter shape."""
    per_layer = tuple(our_shape[1:]) if self.stacked else tuple(our_shape)
    letters = Layout.parse(self.our_layout).letters
    if len(letters) != len(per_layer):
      raise ValueError(f"{self.hf_key}: layout {self.our_layout!r} does not fit shape {our_shape}")
    return dict(zip(letters, per_layer))

  def hf_shape(self, our_shape: Sequence[int]) -> tuple[int, ...]:
    return Layout.parse(self.hf_layout).shape(self.sizes(our_shape))


def to_ours(rule: KeyRule, hf_array: np.ndarray, sizes: Mapping[str, int],
            index: Mapping[str, slice]) -> np.ndarray:
  """Reads our slice `index` (letter -> slice, missing = full) of one HF tensor into our layout.

  `hf_array` may be a lazy memmap: only a covering range of each HF axis is read. For a grouped axis
  `(n h)` the range over `n` is read with full `h`, then `h` is sliced in memory (head_dim is never
  split across devices, so this reads nothing extra in practice).
  """
  hf, ours = Layout.parse(rule.hf_layout), Layout.parse(rule.our_layout)
  full = {letter: slice(0, sizes[letter]) for letter in ours.letters}
  ranges = {letter: slice(*index.get(letter, full[letter]).indices(sizes[letter])[:2])
            for letter in ours.letters}
  hf_slices, expanded_shape, inner_slices = [], [], []
  for group in hf.groups:
    lead, rest = group[0], group[1:]
    inner = int(np.prod([sizes[letter] for letter in rest]))
    hf_slices.append(slice(ranges[lead].start * inner, ranges[lead].stop * inner))
    expanded_shape += [ranges[lead].stop - ranges[lead].start] + [sizes[l] for l in rest]
    inner_slices += [slice(None)] + [ranges[l] for l in rest]
  block = np.asarray(hf_array[tuple(hf_slices)]).reshape(expanded_shape)[tuple(inner_slices)]
  return np.transpose(block, [hf.letters.index(letter) for letter in ours.letters])


def to_hf(rule: KeyRule, our_array: np.ndarray) -> np.ndarray:
  """One layer's (or an unstacked) parameter in our layout -> the HF tensor."""
  hf, ours = Layout.parse(rule.hf_layout), Layout.parse(rule.our_layout)
  sizes = dict(zip(ours.letters, our_array.shape))
  moved = np.transpose(our_array, [ours.letters.index(letter) for letter in hf.letters])
  return moved.reshape(hf.shape(sizes))


def _layer(name: str, path: tuple[str, ...], hf_layout: str, our_layout: str) -> KeyRule:
  return KeyRule(f"model.layers.{{i}}.{name}", ("layers",) + path, hf_layout, our_layout)


# Tensors both families share. Rules whose parameter the config does not create (biases when
# disabled, lm_head when embeddings are tied) are skipped, so a checkpoint that still carries such a
# tensor is reported as having an unexpected key.
_SHARED = (
    KeyRule("model.embed_tokens.weight", ("embed_tokens", "embedding"), "v d", "v d"),
    KeyRule("model.norm.weight", ("norm", "scale"), "d", "d"),
    KeyRule("lm_head.weight", ("lm_head", "kernel"), "v d", "d v"),
    _layer("input_layernorm.weight", ("input_layernorm", "scale"), "d", "d"),
    _layer("post_attention_layernorm.weight", ("post_attention_layernorm", "scale"), "d", "d"),
    _layer("self_attn.q_proj.weight", ("self_attn", "q_proj", "kernel"), "(n h) d", "d n h"),
    _layer("self_attn.k_proj.weight", ("self_attn", "k_proj", "kernel"), "(k h) d", "d k h"),
    _layer("self_attn.v_proj.weight", ("self_attn", "v_proj", "kernel"), "(k h) d", "d k h"),
    _layer("self_attn.o_proj.weight", ("self_attn", "o_proj", "kernel"), "d (n h)", "n h d"),
    _layer("self_attn.q_proj.bias", ("self_attn", "q_proj", "bias"), "(n h)", "n h"),
    _layer("self_attn.k_proj.bias", ("self_attn", "k_proj", "bias"), "(k h)", "k h"),
    _layer("self_attn.v_proj.bias", ("self_attn", "v_proj", "bias"), "(k h)", "k h"),
    _layer("mlp.gate_proj.weight", ("mlp", "gate_proj", "kernel"), "f d", "d f"),
    _layer("mlp.up_proj.weight", ("mlp", "up_proj", "kernel"), "f d", "d f"),
    _layer("mlp.down_proj.weight", ("mlp", "down_proj", "kernel"), "d f", "f d"),
)

KEY_TABLES: Mapping[ModelFamily, tuple[KeyRule, ...]] = {
    ModelFamily.QWEN2: _SHARED,
    # Llama's `attention_bias` also puts a bias on o_proj.
    ModelFamily.LLAMA: _SHARED + (
        _layer("self_attn.o_proj.bias", ("self_attn", "o_proj", "bias"), "d", "d"),),
}
