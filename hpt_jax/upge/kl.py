"""KL penalties between the policy and a reference policy, per token (verl `kl_penalty`).

With ℓ = log π_θ (carries the gradient) and ℓ_ref = log π_ref:

| kind | value                                                            |
|------|------------------------------------------------------------------|
| K1   | ℓ − ℓ_ref                                                        |
| ABS  | |ℓ − ℓ_ref|                                                      |
| K2   | ½(ℓ − ℓ_ref)²                  (verl `mse`)                      |
| K3   | x = clamp(ℓ_ref − ℓ, ±20); clamp(eˣ − x − 1, ±10) (verl `low_var_kl`) |

`straight_through=True` is verl's `<kind>+`: the value of `kind`, the gradient of K2.
"""

import enum
from collections.abc import Callable

import jax
import jax.numpy as jnp

from hpt_jax.typing import Array
from hpt_jax.upge import checks


class KLPenalty(enum.Enum):
  K1 = "k1"
  ABS = "abs"
  K2 = "k2"
  K3 = "k3"


def parse_kl_penalty(name: "str | KLPenalty") -> KLPenalty:
  """Maps a spelling (incl. verl's aliases kl, mse, low_var_kl) to a `KLPenalty`."""
  if isinstance(name, KLPenalty):
    return name
  aliases = {"kl": KLPenalty.K1, "mse": KLPenalty.K2, "low_var_kl": KLPenalty.K3}
  if name in aliases:
    return aliases[name]
  try:
    return KLPenalty(name)
  except ValueError:
    known = ", ".join([k.value for k in KLPenalty] + sorted(aliases))
    raise ValueError(f"kind: unknown KL penalty {name!r}; known: {known}") from None


def _k3(diff: Array) -> Array:
  x = jnp.clip(-diff, -20.0, 20.0)
  return jnp.clip(jnp.exp(x) - x - 1.0, -10.0, 10.0)


_PENALTIES: dict[KLPenalty, Callable[[Array], Array]] = {
    KLPenalty.K1: lambda d: d,
    KLPenalty.ABS: jnp.abs,
    KLPenalty.K2: lambda d: 0.5 * d * d,
    KLPenalty.K3: _k3,
}


def kl_penalty(logp: Array, ref_logp: Array, *, kind: "KLPenalty | str",
               straight_through: bool = False) -> Array:
  """Per-token KL penalty estimate.

  Args:
    logp: [B, T] log π_θ; ref_logp: [B, T] log π_ref (no gradient).
    kind: a `KLPenalty` or its spelling.
    straight_through: value of `kind`, gradient of K2 (verl `<kind>+`).

  Returns:
    [B, T] unreduced penalty.
  """
  kind = parse_kl_penalty(kind)
  checks.check_rank(logp, rank=2, name="logp")
  checks.check_shape(ref_logp, shape=logp.shape, name="ref_logp")
  diff = logp - jax.lax.stop_gradient(ref_logp)
  value = _PENALTIES[kind](diff)
  if not straight_through:
    return value
  k2 = 0.5 * diff * diff
  return k2 - jax.lax.stop_gradient(k2) + jax.lax.stop_gradient(value)
