"""Token log-probabilities and entropies from logits, or chunked from hidden states.

`token_logprobs` takes full logits `[B, T, V]`. `chunked_token_logprobs` takes hidden states
`[B, T, D]` and the unembedding `[D, V]` and walks over the B·T positions in chunks of C with
`lax.scan`; each chunk's logits `[C, V]` are made inside a `jax.checkpoint`, so neither the forward
nor the backward pass ever holds more than one chunk of float32 logits (the backward pass recomputes
them). For a 151,936-token vocabulary over 8,192 positions the full float32 logits would be 5 GB;
with C = 512 one chunk is 311 MB.

Both divide logits by `temperature` before the softmax (verl and trl do the same with the sampling
temperature) and compute in at least float32: ℓ = z_y − logsumexp(z), H = logsumexp(z) − Σ softmax(z)·z.
"""

import jax
import jax.numpy as jnp

from hpt_jax.typing import Array
from hpt_jax.upge import checks


def _compute_dtype(dtype) -> jnp.dtype:
  # bf16 logits lose too much in logsumexp; float64 stays float64 (reference tests).
  return jnp.promote_types(dtype, jnp.float32)


def _logp_entropy(logits: Array, targets: Array, temperature: float) -> tuple[Array, Array]:
  z = logits / temperature
  lse = jax.nn.logsumexp(z, axis=-1)
  logp = jnp.take_along_axis(z, targets[..., None], axis=-1)[..., 0] - lse
  entropy = lse - jnp.sum(jax.nn.softmax(z, axis=-1) * z, axis=-1)
  return logp, entropy


def entropy_from_logits(logits: Array, *, temperature: float = 1.0) -> Array:
  """Token entropy H = logsumexp(z) − Σ softmax(z)·z, z = logits/temperature (natural log).

  Args:
    logits: [..., V].

  Returns:
    [...] in at least float32.
  """
  z = logits.astype(_compute_dtype(logits.dtype)) / temperature
  lse = jax.nn.logsumexp(z, axis=-1)
  return lse - jnp.sum(jax.nn.softmax(z, axis=-1) * z, axis=-1)


def token_logprobs(logits: Array, targets: Array, *, temperature: float = 1.0) -> tuple[Array, Array]:
  """log π(y_t) and entropy from full logits.

  Args:
    logits: [B, T, V].
    targets: [B, T] int token ids in [0, V).
    temperature: logits are divided by it.

  Returns:
    (logp [B, T], entropy [B, T]) in at least float32.
  """
  checks.check_rank(logits, rank=3, name="logits")
  checks.check_shape(targets, shape=logits.shape[:2], name="targets")
  checks.check_integer(targets, name="targets")
  if temperature <= 0:
    raise ValueError(f"temperature: must be > 0, got {temperature}")
  return _logp_entropy(logits.astype(_compute_dtype(logits.dtype)), targets, temperature)


def chunked_token_logprobs(hidden: Array, unembedding: Array, targets: Array, *, chunk_size: int,
                           temperature: float = 1.0) -> tuple[Array, Array]:
  """log π(y_t) and entropy from hidden states without materialising `[B, T, V]` logits.

  logits = hidden @ unembedding (accumulated in float32), per chunk of `chunk_size` positions.

  Args:
    hidden: [B, T, D] final hidden states (after the last norm).
    unembedding: [D, V] (tied embedding transposed or the lm_head kernel).
    targets: [B, T] int token ids.
    chunk_size: C, positions per chunk; B·T is padded up to a multiple of C.
    temperature: logits are divided by it.

  Returns:
    (logp [B, T], entropy [B, T]) in at least float32; differentiable in hidden and unembedding.
  """
  checks.check_rank(hidden, rank=3, name="hidden")
  checks.check_rank(unembedding, rank=2, name="unembedding")
  batch, length, width = hidden.shape
  if unembedding.shape[0] != width:
    raise ValueError(f"unembedding: expected leading dim D={width}, got shape {unembedding.shape}")
  checks.check_shape(targets, shape=(batch, length), name="targets")
  checks.check_integer(targets, name="targets")
  if chunk_size < 1:
    raise ValueError(f"chunk_size: must be >= 1, got {chunk_size}")
  if temperature <= 0:
    raise ValueError(f"temperature: must be > 0, got {temperature}")
  dtype = _compute_dtype(jnp.promote_types(hidden.dtype, unembedding.dtype))
  n = batch * length
  n_chunks = -(-n // chunk_size)
  pad = n_chunks * chunk_size - n
  h = jnp.pad(hidden.reshape(n, width), ((0, pad), (0, 0))).reshape(n_chunks, chunk_size, width)
  y = jnp.pad(targets.reshape(n), (0, pad)).reshape(n_chunks, chunk_size)

  # Checkpointed: the backward pass keeps only (h_c, y_c) per chunk and recomputes the logits.
  @jax.checkpoint
  def one_chunk(h_c: Array, y_c: Array) -> tuple[Array, Array]:
    logits = jnp.einsum("cd,dv->cv", h_c, unembedding, preferred_element_type=dtype)  # [C, V]
    return _logp_entropy(logits, y_c, temperature)

  def body(carry, xs):
    return carry, one_chunk(*xs)

  _, (logp, entropy) = jax.lax.scan(body, None, (h, y))  # [n_chunks, C] each
  return logp.reshape(-1)[:n].reshape(batch, length), entropy.reshape(-1)[:n].reshape(batch, length)
