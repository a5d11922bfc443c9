"""The likelihood term ∇π_θ (UPGE part 4) at token and at sequence level.

The gradient of π_θ itself is the same for every algorithm; what differs is whether the weight
multiplies each token's log-likelihood ℓ_it (token level) or the sequence log-likelihood
log π_θ(τ_i) = Σ_t m_it ℓ_it (sequence level, REINFORCE on whole responses, GSPO's view of τ).
"""

import jax.numpy as jnp

from hpt_jax.typing import Array
from hpt_jax.upge import checks


def token_log_likelihood(logp: Array, response_mask: Array) -> Array:
  """ℓ_it on valid tokens, 0 elsewhere (masked with `where`, so padding NaNs cannot leak).

  Args:
    logp: [B, T]; response_mask: [B, T].

  Returns:
    [B, T].
  """
  checks.check_rank(logp, rank=2, name="logp")
  mask = checks.as_mask(response_mask, shape=logp.shape, name="response_mask")
  return jnp.where(mask, logp, 0.0)


def sequence_log_likelihood(logp: Array, response_mask: Array) -> Array:
  """log π_θ(τ_i) = Σ_t m_it ℓ_it.

  Args:
    logp: [B, T]; response_mask: [B, T].

  Returns:
    [B].
  """
  return token_log_likelihood(logp, response_mask).sum(-1)


def token_nll(logp: Array) -> Array:
  """−ℓ_it, the SFT per-token loss (Â_SFT ≡ 1, π_ref = π_θ). Returns [B, T] unmasked."""
  checks.check_rank(logp, rank=2, name="logp")
  return -logp
