"""Minimal safetensors reader/writer that reads slices lazily and writes tensor by tensor.

Why not `safetensors.numpy`: its loader materialises whole tensors and has no bfloat16 numpy type;
import needs *slices* (each device's shard, so no host holds a full unsharded copy), and export needs
to stream one tensor at a time. The format is simple: an 8-byte little-endian header length, a JSON
header `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}`, then the raw
little-endian, C-order data (offsets relative to the end of the header).
"""

from __future__ import annotations

import json
import os
import struct
from typing import Callable, Iterable, Mapping, Sequence

import ml_dtypes
import numpy as np

_DTYPES: Mapping[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}


class SafetensorsFile:
  """One .safetensors file, memory-mapped; `tensor(name)` is a lazy array view (slicing reads pages)."""

  def __init__(self, path: str | os.PathLike):
    self.path = os.fspath(path)
    with open(self.path, "rb") as f:
      (header_len,) = struct.unpack("<Q", f.read(8))
      header = json.loads(f.read(header_len))
    header.pop("__metadata__", None)
    self.entries: dict[str, dict] = header
    self._data_start = 8 + header_len
    self._mmap: np.memmap | None = None

  def keys(self) -> list[str]:
    return list(self.entries)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self.entries[name]["shape"])

  def tensor(self, name: str) -> np.ndarray:
    """A read-only memmap view of `name` (no data is read until it is sliced/copied)."""
    entry = self.entries[name]
    if entry["dtype"] not in _DTYPES:
      raise ValueError(f"{self.path}: tensor {name!r} has unsupported dtype {entry['dtype']}")
    if self._mmap is None:
      self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")
    begin, end = entry["data_offsets"]
    raw = self._mmap[self._data_start + begin:self._data_start + end]
    return raw.view(_DTYPES[entry["dtype"]]).reshape(entry["shape"])


def write_file(path: str | os.PathLike,
               tensors: Sequence[tuple[str, tuple[int, ...], np.dtype, Callable[[], np.ndarray]]],
               *, metadata: Mapping[str, str] | None = None) -> None:
  """Writes tensors one at a time: each entry is (name, shape, dtype, produce) and `produce()` is
  called only when that tensor is written, so at most one tensor is in host memory."""
  header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
  offset = 0
  for name, shape, dtype, _ in tensors:
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    header[name] = {"dtype": _NAMES[np.dtype(dtype)], "shape": list(shape),
                    "data_offsets": [offset, offset + nbytes]}
    offset += nbytes
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)  # the spec pads the header to 8-byte alignment
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for name, shape, dtype, produce in tensors:
      array = np.ascontiguousarray(produce(), dtype=dtype)
      if array.shape != tuple(shape):
        raise ValueError(f"tensor {name!r}: produced shape {array.shape}, declared {tuple(shape)}")
      f.write(array.tobytes())


def tensor_nbytes(shape: Iterable[int], dtype: np.dtype) -> int:
  return int(np.prod(tuple(shape), dtype=np.int64)) * np.dtype(dtype).itemsize
