"""Rotary position embeddings (the "rotate half" layout that Qwen2 and Llama checkpoints use).

Frequencies follow transformers' float32 computation so logits match to ~1e-6:
  inv_freq_i = 1 / theta^(2i / H),  i = 0 .. H/2-1,
and for Llama 3.1 the `llama3` rescaling (Meta's reference `apply_scaling`): wavelengths longer than
`original_max / low_freq_factor` are divided by `factor`, shorter than `original_max /
high_freq_factor` are kept, and the band in between interpolates linearly in `original_max / wavelen`.
"""

from __future__ import annotations

import math

import chex
import jax.numpy as jnp

from hpt_jax.models.config import Llama3RopeScaling
from hpt_jax.typing import Array


def inverse_frequencies(*, head_dim: int, theta: float,
                        scaling: Llama3RopeScaling | None = None) -> Array:
  """Returns inv_freq: [H/2] float32."""
  exponents = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
  inv_freq = 1.0 / (jnp.float32(theta) ** exponents)
  if scaling is None:
    return inv_freq
  old_len = scaling.original_max_position_embeddings
  low_freq_wavelen = old_len / scaling.low_freq_factor
  high_freq_wavelen = old_len / scaling.high_freq_factor
  wavelen = 2 * math.pi / inv_freq
  scaled = jnp.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
  smooth = ((old_len / wavelen - scaling.low_freq_factor)
            / (scaling.high_freq_factor - scaling.low_freq_factor))
  smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
  is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
  return jnp.where(is_medium, smoothed, scaled)


def rope_angles(positions: Array, inv_freq: Array) -> tuple[Array, Array]:
  """cos, sin of the rotation angles.

  Args:
    positions: [B, T] int.
    inv_freq: [H/2] float32.
  Returns:
    (cos, sin): each [B, T, H] float32 (the H/2 angles repeated twice, HF "rotate half" layout).
  """
  chex.assert_rank(positions, 2)
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, H/2]
  angles = jnp.concatenate([angles, angles], axis=-1)           # [B, T, H]
  return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
  """Rotates query/key heads.

  Args:
    x: [B, T, heads, H].
    cos, sin: [B, T, H] float32.
  Returns:
    [B, T, heads, H] in x's dtype (the rotation itself is computed in float32).
  """
  chex.assert_rank(x, 4)
  half = x.shape[-1] // 2
  xf = x.astype(jnp.float32)
  rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
  out = xf * cos[:, :, None, :] + rotated * sin[:, :, None, :]
  return out.astype(x.dtype)
