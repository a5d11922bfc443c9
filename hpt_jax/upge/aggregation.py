"""Aggregation (UPGE's reduction of per-token losses) as exact `(total, denom)` pairs.

Every mode reduces a per-token loss `[B, T]` under a mask to a `LossTerm(total, denom)`. Pairs from
micro-batches (and devices) are added field by field and divided once at the end by `finalize`:

  loss = total / max(denom, 1)

so the accumulated value equals the full-batch value exactly. Denominators are counts (tokens, rows,
rows × T), never carry gradient, and are 0 only when nothing was selected — the term is then 0, not
NaN (this is also the official HPT "skip the SFT loss if the micro-batch has no demo" rule). A mode
whose normaliser is a constant (the official LUFFY/HPT Σ/T, or none: token-sum) divides inside and
reports denom 0.

Modes (ESTIMATORS.md §1.3, §0, §3; `L` loss, `m` mask, `|y_i| = Σ_t m_it`, G = #rows with |y_i| > 0):

| mode                       | total                          | denom  | full-batch value          |
|----------------------------|--------------------------------|--------|---------------------------|
| TOKEN_MEAN                 | Σ L m                          | Σ m    | verl `token-mean`         |
| TOKEN_SUM                  | Σ L m                          | 0      | verl 0.9.1 `token-sum`    |
| SEQ_MEAN_TOKEN_SUM         | Σ_i Σ_t L m                    | G      | verl `seq-mean-token-sum` |
| SEQ_MEAN_TOKEN_MEAN        | Σ_i Σ_t L m / (|y_i| + 1e-8)   | G      | verl `seq-mean-token-mean`|
| SEQ_MEAN_TOKEN_SUM_NORM    | Σ L m                          | G · T  | verl 0.9.1 Dr.GRPO norm   |
| OFFICIAL_TOKEN_SUM_OVER_T  | Σ L m / T                      | 0      | LUFFY/HPT Σ/T (no /G)     |

T is `width` when given (set it to the maximum response length when micro-batches are padded to
different widths), else the padded width `mask.shape[-1]`.

Where the official HPT/LUFFY code differs from "accumulate, then divide": it finalizes every
micro-batch on its own (its token-mean SFT loss is a per-micro-batch mean, and micro-batch losses are
summed), and it averages gradients over data-parallel ranks (its Σ/T loss is Σ/(T·dp) globally). A
train step reproduces that by calling `total_loss` per micro-batch and scaling by 1/dp; the pairs
support both.
"""

import enum
from collections.abc import Callable
from typing import NamedTuple

import jax.numpy as jnp

from hpt_jax.typing import Array
from hpt_jax.upge import checks

# verl's per-sequence token mean adds this to |y_i|.
_SEQ_TOKEN_MEAN_EPS = 1e-8


class LossTerm(NamedTuple):
  """A loss as an additive pair: value = total / max(denom, 1).

  Attributes:
    total: [] float, carries the gradient.
    denom: [] float count (no gradient); 0 means "already normalised" or "empty".
  """
  total: Array
  denom: Array


class Aggregation(enum.Enum):
  """Loss aggregation modes; values are the config spellings (verl's where the name is shared)."""
  TOKEN_MEAN = "token-mean"
  TOKEN_SUM = "token-sum"
  SEQ_MEAN_TOKEN_SUM = "seq-mean-token-sum"
  SEQ_MEAN_TOKEN_MEAN = "seq-mean-token-mean"
  SEQ_MEAN_TOKEN_SUM_NORM = "seq-mean-token-sum-norm"
  OFFICIAL_TOKEN_SUM_OVER_T = "official-token-sum-over-T"


def parse_aggregation(name: "str | Aggregation") -> Aggregation:
  """Maps a config spelling to an `Aggregation`; unknown names list the known ones."""
  if isinstance(name, Aggregation):
    return name
  try:
    return Aggregation(name)
  except ValueError:
    known = ", ".join(m.value for m in Aggregation)
    raise ValueError(f"aggregation: unknown mode {name!r}; known: {known}") from None


def _masked(loss: Array, mask: Array) -> Array:
  # where (not multiply): inf/NaN at masked positions must not leak into the sum or its gradient.
  return jnp.where(mask, loss, 0.0)


def _nonempty_rows(mask: Array, dtype) -> Array:
  return (mask.sum(-1) > 0).astype(dtype).sum()


def _token_mean(loss, mask, width):
  del width
  return LossTerm(_masked(loss, mask).sum(), mask.sum().astype(loss.dtype))


def _token_sum(loss, mask, width):
  del width
  return LossTerm(_masked(loss, mask).sum(), jnp.zeros((), loss.dtype))


def _seq_mean_token_sum(loss, mask, width):
  del width
  return LossTerm(_masked(loss, mask).sum(), _nonempty_rows(mask, loss.dtype))


def _seq_mean_token_mean(loss, mask, width):
  del width
  lengths = mask.sum(-1).astype(loss.dtype)
  per_row = _masked(loss, mask).sum(-1) / (lengths + _SEQ_TOKEN_MEAN_EPS)
  return LossTerm(per_row.sum(), _nonempty_rows(mask, loss.dtype))


def _seq_mean_token_sum_norm(loss, mask, width):
  return LossTerm(_masked(loss, mask).sum(), _nonempty_rows(mask, loss.dtype) * width)


def _official_token_sum_over_t(loss, mask, width):
  return LossTerm(_masked(loss, mask).sum() / width, jnp.zeros((), loss.dtype))


_AGGREGATORS: dict[Aggregation, Callable[[Array, Array, int], LossTerm]] = {
    Aggregation.TOKEN_MEAN: _token_mean,
    Aggregation.TOKEN_SUM: _token_sum,
    Aggregation.SEQ_MEAN_TOKEN_SUM: _seq_mean_token_sum,
    Aggregation.SEQ_MEAN_TOKEN_MEAN: _seq_mean_token_mean,
    Aggregation.SEQ_MEAN_TOKEN_SUM_NORM: _seq_mean_token_sum_norm,
    Aggregation.OFFICIAL_TOKEN_SUM_OVER_T: _official_token_sum_over_t,
}


def aggregate(loss: Array, mask: Array, *, mode: "Aggregation | str", width: int | None = None) -> LossTerm:
  """Reduces a per-token loss to a `(total, denom)` pair.

  Args:
    loss: [B, T] float per-token loss.
    mask: [B, T] bool or {0, 1}.
    mode: an `Aggregation` (or its spelling).
    width: the constant T of the `*_NORM` / `*_OVER_T` modes; defaults to `loss.shape[-1]`.

  Returns:
    `LossTerm` with scalar `total` and `denom`.
  """
  mode = parse_aggregation(mode)
  checks.check_rank(loss, rank=2, name="loss")
  checks.check_floating(loss, name="loss")
  mask = checks.as_mask(mask, shape=loss.shape, name="mask")
  width = loss.shape[-1] if width is None else width
  if width < 1:
    raise ValueError(f"width: must be >= 1, got {width}")
  return _AGGREGATORS[mode](loss, mask, width)


def finalize(term: LossTerm) -> Array:
  """total / max(denom, 1): the loss value of an (accumulated) pair; 0 for an empty term."""
  return term.total / jnp.maximum(term.denom, 1.0)


def add_terms(a: dict[str, LossTerm], b: dict[str, LossTerm]) -> dict[str, LossTerm]:
  """Field-wise sum of two term dicts with the same keys (micro-batch / device accumulation)."""
  if a.keys() != b.keys():
    raise ValueError(f"terms: keys differ, {sorted(a)} vs {sorted(b)}")
  return {k: LossTerm(a[k].total + b[k].total, a[k].denom + b[k].denom) for k in a}


def total_loss(terms: dict[str, LossTerm]) -> Array:
  """Σ_k finalize(terms[k]): the scalar loss the optimiser differentiates."""
  return sum((finalize(t) for t in terms.values()), start=jnp.zeros(()))


def masked_mean(values: Array, mask: Array) -> Array:
  """Σ v m / max(Σ m, 1): a metric-style mean that is 0 (not NaN) for an empty mask."""
  mask = jnp.asarray(mask, bool)
  return _masked(values, mask).sum() / jnp.maximum(mask.sum(), 1).astype(values.dtype)


def masked_mean_rows(values: Array, mask: Array) -> Array:
  """Per-row Σ_t v m / max(|y_i|, 1). Args: values, mask [B, T]. Returns [B]."""
  mask = jnp.asarray(mask, bool)
  return _masked(values, mask).sum(-1) / jnp.maximum(mask.sum(-1), 1).astype(values.dtype)
