"""Host wrapper around the jitted loop: token ids or texts in, numpy token ids and decoded texts out.

It does tokenization, bucketing, left padding, device placement and detokenization only; chat templates
belong to the data layer, sampling logic to `loop.py`.

Multi-process safe: with a `batch_sharding` spanning several processes, every process calls
`generate` with the same prompts (a collective), each places only its own devices' rows, and every
process gets all rows back (`to_host` all-gathers what its devices do not hold).
"""

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from hpt_jax.sampling.loop import DecodeModel, SampleOutput, jit_sample
from hpt_jax.sampling.strategies import Strategy


class TextCodec(Protocol):
  """The slice of a `transformers` tokenizer the wrapper uses."""

  def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]:
    ...

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = ...) -> str:
    ...


def _pick(sizes: tuple[int, ...], n: int, *, field: str) -> int:
  for size in sorted(sizes):
    if size >= n:
      return size
  raise ValueError(f"Buckets.{field}: no bucket holds length {n} (largest is {max(sizes)})")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Buckets:
  """The allowed static lengths; each call compiles for the smallest bucket that fits.

  Attributes:
    prompt: allowed prompt lengths P (left-padded to).
    response: allowed response lengths T (the KV cache has P + T slots).
  """

  prompt: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)
  response: tuple[int, ...] = (64, 256, 1024, 4096, 8192)

  def __post_init__(self):
    for field in ("prompt", "response"):
      sizes = getattr(self, field)
      if not sizes or any(int(s) < 1 for s in sizes):
        raise ValueError(f"Buckets.{field} must be a non-empty tuple of positive ints, got {sizes}")

  def prompt_len(self, n: int) -> int:
    return _pick(self.prompt, n, field="prompt")

  def response_len(self, n: int) -> int:
    return _pick(self.response, n, field="response")


def left_pad(prompts: Sequence[Sequence[int]], *, length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Left-pads token id lists into [B, length] int32 tokens and a [B, length] bool mask."""
  tokens = np.full((len(prompts), length), pad_id, np.int32)
  mask = np.zeros((len(prompts), length), np.bool_)
  for row, ids in enumerate(prompts):
    if not 0 < len(ids) <= length:
      raise ValueError(f"prompt row {row}: length {len(ids)} is not in [1, {length}]")
    tokens[row, length - len(ids):] = ids
    mask[row, length - len(ids):] = True
  return tokens, mask


def prefill_tokens(mask: np.ndarray, *, granules: int) -> int:
  """The packed prefill size for a [B, P] prompt mask: its real token count rounded up to a multiple
  of B * P / granules (so at most `granules` sizes, i.e. programs, per batch shape)."""
  if granules < 1:
    raise ValueError(f"prefill_granules must be >= 1, got {granules}")
  size = mask.size
  granule = -(-size // granules)
  return min(size, -(-int(mask.sum()) // granule) * granule)


def to_host(x: Any) -> np.ndarray:
  """The full value of a (possibly multi-process) array as NumPy, on every process.

  A global array whose shards live on other processes' devices cannot be `device_get`; its rows
  are all-gathered across processes instead (every host needs every row: the trainer keeps one
  global host-side view of a step, see `hpt_jax.training.distributed`).
  """
  if not isinstance(x, jax.Array):
    return np.asarray(x)
  if x.is_fully_replicated:
    return np.asarray(x.addressable_data(0))
  if x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


@dataclasses.dataclass(frozen=True)
class Rollouts:
  """Host-side results: `output` holds numpy arrays (see `SampleOutput`); `texts` the decoded
  responses (up to and including EOS, special tokens skipped) when a tokenizer was given."""

  output: SampleOutput
  texts: list[str] | None


class Sampler:
  """Generates rollouts with a `DecodeModel`, compiling once per (batch, prompt bucket, response
  bucket, strategy, num_samples).

  Args:
    model: the decode model (e.g. `CausalLMDecoder`).
    eos_ids: token ids that end a response.
    pad_id: left padding of prompts and filler after EOS.
    buckets: allowed prompt / response lengths.
    batch_multiple: the number of prompts is padded up to a multiple of this (with dummy prompts that
      are dropped again), so batches of a varying size share programs and divide the mesh's batch axes.
    batch_sharding: where the prompt arrays are placed (e.g. NamedSharding over ('data', 'fsdp')).
    tokenizer: needed by `generate_texts` and for decoded texts.
    prefill_granules: 0 = one program per bucket, the prefill computes every padded prompt slot.
      g > 0 (for a model with `packs_prefill`, unsharded batches only): the prefill's per-token work
      runs on the real prompt tokens packed into B * P * k / g rows (the smallest k that holds them):
      up to g programs per bucket (each a compilation), at most B * P / g rows computed for nothing.
  """

  def __init__(self, model: DecodeModel, *, eos_ids: Sequence[int], pad_id: int,
               buckets: Buckets = Buckets(), batch_multiple: int = 1,
               batch_sharding: jax.sharding.Sharding | None = None,
               tokenizer: TextCodec | None = None, prefill_granules: int = 0):
    if not eos_ids:
      raise ValueError("Sampler: eos_ids must name at least one token")
    if batch_multiple < 1:
      raise ValueError(f"Sampler: batch_multiple must be >= 1, got {batch_multiple}")
    if prefill_granules < 0:
      raise ValueError(f"Sampler: prefill_granules must be >= 0, got {prefill_granules}")
    self.prefill_granules = prefill_granules
    self.model = model
    self.eos_ids = tuple(int(e) for e in eos_ids)
    self.pad_id = int(pad_id)
    self.buckets = buckets
    self.batch_multiple = batch_multiple
    self.batch_sharding = batch_sharding
    self.tokenizer = tokenizer

  def _put(self, x: np.ndarray) -> jax.Array:
    if self.batch_sharding is None:
      return jnp.asarray(x)
    # Every process holds the same global `x` and hands each of its devices that device's slice, so
    # this works when the sharding spans several processes (no host sends data it does not own).
    return jax.make_array_from_callback(x.shape, self.batch_sharding, lambda index: x[index])

  def generate(self, params: Any, prompts: Sequence[Sequence[int]], *, strategy: Strategy,
               max_new_tokens: int, num_samples: int = 1, seed: int = 0,
               prompt_ids: Sequence[int] | None = None) -> Rollouts:
    """Samples `num_samples` responses for each prompt (token id lists, no padding).

    Args:
      params: the model's parameter pytree (the trainer's arrays, not copied).
      prompts: Bp token id lists.
      strategy: a sampling strategy.
      max_new_tokens: response length cap; the response bucket is the smallest that holds it.
      num_samples: rows per prompt (adjacent in the output).
      seed: with `prompt_ids` and the sample index, fixes every row's samples.
      prompt_ids: stable ids of the prompts (default 0..Bp-1); reuse them to reproduce a row.

    Returns:
      `Rollouts` with Bp * num_samples rows.
    """
    if not prompts:
      raise ValueError("Sampler.generate: prompts is empty")
    if max_new_tokens < 1:
      raise ValueError(f"Sampler.generate: max_new_tokens must be >= 1, got {max_new_tokens}")
    ids = np.arange(len(prompts)) if prompt_ids is None else np.asarray(prompt_ids)
    if ids.shape != (len(prompts),):
      raise ValueError(f"Sampler.generate: prompt_ids has shape {ids.shape}, expected ({len(prompts)},)")
    prompt_len = self.buckets.prompt_len(max(len(p) for p in prompts))
    response_len = self.buckets.response_len(max_new_tokens)
    n_real = len(prompts)
    n_rows = -(-n_real // self.batch_multiple) * self.batch_multiple
    # Dummy prompts (one pad token) fill the batch up to a multiple; their rows are dropped below.
    padded = list(prompts) + [[self.pad_id]] * (n_rows - n_real)
    ids = np.concatenate([ids, np.full(n_rows - n_real, -1)]).astype(np.int32)
    tokens, mask = left_pad(padded, length=prompt_len, pad_id=self.pad_id)
    # Packing gathers tokens across rows, so only unsharded batches pack their prefill.
    packs = (self.prefill_granules and getattr(self.model, "packs_prefill", False)
             and self.batch_sharding is None)
    packed = prefill_tokens(mask, granules=self.prefill_granules) if packs else None
    out = jit_sample(
        self.model, params, self._put(tokens), self._put(mask), self._put(ids),
        seed=np.int32(seed), eos_ids=np.asarray(self.eos_ids, np.int32),
        max_new_tokens=np.int32(max_new_tokens), strategy=strategy,
        num_samples=num_samples, response_len=response_len, pad_id=self.pad_id,
        prefill_tokens=packed)
    keep = n_real * num_samples
    out = jax.tree.map(lambda x: x[:keep] if np.ndim(x) else x, jax.tree.map(to_host, out))
    return Rollouts(output=out, texts=self._decode(out) if self.tokenizer is not None else None)

  def generate_texts(self, params: Any, texts: Sequence[str], **kwargs) -> Rollouts:
    """`generate` on texts (already chat-formatted), encoded without extra special tokens."""
    if self.tokenizer is None:
      raise ValueError("Sampler.generate_texts needs a tokenizer")
    prompts = [self.tokenizer.encode(t, add_special_tokens=False) for t in texts]
    for row, ids in enumerate(prompts):
      if not ids:
        raise ValueError(f"Sampler.generate_texts: text row {row} encodes to no tokens")
    return self.generate(params, prompts, **kwargs)

  def _decode(self, out: SampleOutput) -> list[str]:
    return [self.tokenizer.decode(row[m.astype(bool)].tolist(), skip_special_tokens=True)
            for row, m in zip(out.tokens, out.mask)]
