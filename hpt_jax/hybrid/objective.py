"""The hybrid objective of one micro-batch: RL rows, demonstration rows, entropy bonus, as LossTerms.

Rows carry the gate's weights (see `hpt_jax.training.batching`): `rl_weight` (α on rollouts, β·w_off
on demonstrations) and `sft_weight` (β·w_sft on demonstrations). Three ways to turn them into a loss,
chosen by `LossMode`:

| mode     | RL rows                                  | demonstration rows                   | normalisation                       |
|----------|------------------------------------------|--------------------------------------|-------------------------------------|
| OFFICIAL | `algorithm` (e.g. HptRl: Σ −Â·r / T),    | Σ w_sft·(−ℓ) / #demo tokens of the   | per micro-batch (and per virtual    |
|          | Â scaled by rl_weight                    | micro-batch, skipped when empty      | rank), micro-batch losses SUMMED    |
| GLOBAL   | same terms                               | same terms                           | Σ totals / Σ denominators over the  |
|          |                                          |                                      | whole batch (micro-batches, devices)|
| PAPER    | α_q/(n_q·Q) · Σ_i Σ_t −Â_i r_it / T_c   | β_q/(Q·|τ*_q|) · Σ_t −log π(τ*_t)    | per question, averaged over the Q   |
|          | (Dr.GRPO: mean-centred Â, no clip)       | (token-mean NLL of the demo)         | questions of the batch              |

OFFICIAL is the official code's arithmetic (PAPER.md §2.3 step 10): its SFT weight per optimizer step
grows with the number of micro-batches holding demonstrations. PAPER is Alg. 1 / Eq. 13 read
literally, L = (1/Q) Σ_q α_q L_RL,q + β_q L_SFT,q, with the code's Dr.GRPO RL (no std, no clip)
and a constant length normaliser T_c (`rl_width`; T_c = 1 is Eq. 11 verbatim, which only rescales
RL against SFT); n_q is the row count of the row's advantage group, so PAPER expects demonstrations in
their own group (the HPT routing, not `demo_joins_group`). GLOBAL serves the clean baselines (GRPO token-mean over the whole batch, ...).
All three add the entropy bonus −c_H·(token-mean entropy over every row) as a term of its own.

Every term is a `upge.LossTerm(total, denom)`; how totals and denominators are combined across
micro-batches is the train step's job (`combine_official`, `combine_global`).
Letters: B rows of the micro-batch, T positions.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import NamedTuple

import jax
import jax.numpy as jnp

from hpt_jax import upge
from hpt_jax.typing import Array
from hpt_jax.upge.aggregation import Aggregation, LossTerm

Terms = dict[str, LossTerm]


class LossMode(enum.Enum):
  OFFICIAL = "official"
  GLOBAL = "global"
  PAPER = "paper"


class AdvantageEstimator(enum.Enum):
  """How the step turns row rewards and group ids into Â (over the whole batch, before the scan)."""
  GIVEN = "given"  # use `advantages` from the batch as they are
  GRPO = "grpo"  # (R − mean_g) / (std_g + ε), unbiased std; singleton μ=0, σ=1 (verl)
  DR_GRPO = "dr_grpo"  # R − mean_g (official HPT/LUFFY `grpo_use_std=False`)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LossConfig:
  """What the train step optimises.

  Attributes:
    algorithm: the upge algorithm acting on rows with rl_weight > 0 (None: no RL term). Its own
      `entropy_coeff` must be 0 — the bonus is `entropy_coeff` here, over all rows, once.
    sft: add the weighted token-mean NLL over demonstration rows (their `sft_weight`).
    mode: see the module table.
    advantage: how Â is computed.
    entropy_coeff: c_H of the bonus −c_H·H (official 0.001).
    rl_width: T_c of PAPER mode (the official code's padded response width, 8192).
    official_ranks: OFFICIAL mode only: each micro-batch is cut into this many row blocks,
      normalised separately and averaged, as the official run's 8 data-parallel ranks each
      normalise their own micro-batch before gradients are averaged (1: one block).
    temperature: logits are divided by it before log-softmax / entropy (rollout temperature).
    logprob_chunk: positions per chunk of the log-prob / entropy computation from hidden states
      (each chunk's logits are recomputed in the backward pass); None computes the full [Bm, L, V]
      float32 logits at once and keeps them — faster for a small vocabulary, never for 152k.
  """

  algorithm: upge.Algorithm | None = upge.HptRl(width=8192)
  sft: bool = True
  mode: LossMode = LossMode.OFFICIAL
  advantage: AdvantageEstimator = AdvantageEstimator.DR_GRPO
  entropy_coeff: float = 0.001
  rl_width: int = 8192
  official_ranks: int = 1
  temperature: float = 1.0
  logprob_chunk: int | None = 1024

  def __post_init__(self):
    if getattr(self.algorithm, "entropy_coeff", 0.0) != 0.0:
      raise ValueError(f"LossConfig.algorithm: {type(self.algorithm).__name__}.entropy_coeff must be 0; "
                       "set LossConfig.entropy_coeff instead (the bonus is applied once, over all rows)")
    if self.mode is LossMode.PAPER and not isinstance(self.algorithm, (upge.HptRl, type(None))):
      raise ValueError(f"LossConfig.algorithm: PAPER mode uses Dr.GRPO's −Â·r (HptRl or None), got "
                       f"{type(self.algorithm).__name__}")
    if self.algorithm is None and not self.sft:
      raise ValueError("LossConfig: no algorithm and sft=False leaves nothing to optimise")
    chunk_ok = self.logprob_chunk is None or self.logprob_chunk >= 1
    if self.rl_width < 1 or self.official_ranks < 1 or not chunk_ok:
      raise ValueError(f"LossConfig.rl_width ({self.rl_width}), official_ranks ({self.official_ranks}) and "
                       f"logprob_chunk ({self.logprob_chunk}) must be >= 1")
    if self.temperature <= 0:
      raise ValueError(f"LossConfig.temperature must be > 0, got {self.temperature}")


class RowInputs(NamedTuple):
  """One micro-batch (or one virtual-rank block of it) as the objective sees it."""

  logp: Array  # [B, T] log π_θ(target t), with gradient
  entropy: Array  # [B, T] token entropy, with gradient
  response_mask: Array  # [B, T] bool
  old_logp: Array  # [B, T] log π_old (stop_gradient(logp) for on-policy data)
  advantages: Array  # [B] Â (unweighted)
  rewards: Array  # [B]
  is_demo: Array  # [B] bool
  rl_weight: Array  # [B]
  sft_weight: Array  # [B]
  group_size: Array  # [B] rows in the row's group
  num_questions: Array  # [] Q of the whole batch


def _entropy_term(x: RowInputs, coeff: float) -> Terms:
  if coeff == 0.0:
    return {}
  return {"entropy": upge.aggregate(-coeff * x.entropy, x.response_mask, mode=Aggregation.TOKEN_MEAN)}


def _sft_term(x: RowInputs) -> Terms:
  """Σ w_sft·(−ℓ) / #tokens of demonstration rows with w_sft > 0 (token mean; 0 when empty)."""
  rows = x.is_demo & (x.sft_weight > 0)
  mask = x.response_mask & rows[:, None]
  return {"sft": upge.aggregate(-x.sft_weight[:, None] * x.logp, mask, mode=Aggregation.TOKEN_MEAN)}


def _algorithm_terms(algorithm: upge.Algorithm, x: RowInputs) -> tuple[Terms, dict[str, Array]]:
  """The configured algorithm over rows with rl_weight > 0, Â scaled by rl_weight.

  Scaling Â by a weight w ≥ 0 scales every per-token loss of the upge algorithms by w (they are
  positively homogeneous in Â: −Â·r, PPO's max/min of such terms, CISPO), so this is w·L_row.
  """
  rl_rows = x.rl_weight > 0
  inputs = upge.LossInputs(
      logp=x.logp,
      response_mask=x.response_mask & rl_rows[:, None],
      advantages=x.advantages * x.rl_weight,
      old_logp=x.old_logp,
      is_demo=x.is_demo,
      entropy=x.entropy,
      scores=x.rewards,
  )
  return algorithm.loss_terms(inputs)


def _paper_terms(x: RowInputs, rl_width: int, with_rl: bool, with_sft: bool) -> Terms:
  """Per-question weighted sums; already normalised (denominator 0)."""
  q = jnp.maximum(x.num_questions, 1.0)
  terms = {}
  zero = jnp.zeros((), x.logp.dtype)
  if with_rl:
    rl_rows = ~x.is_demo & (x.rl_weight > 0)
    mask = x.response_mask & rl_rows[:, None]
    ratio = upge.old_policy_ratio(x.logp, x.old_logp, clamp=None)
    per_token, _ = upge.no_clip(ratio, jnp.broadcast_to(x.advantages[:, None], x.logp.shape))
    coeff = x.rl_weight / (jnp.maximum(x.group_size, 1.0) * q * rl_width)  # [B]
    per_row = jnp.where(mask, per_token, 0.0).sum(-1)
    terms["rl"] = LossTerm(jnp.sum(jnp.where(rl_rows, coeff * per_row, 0.0)), zero)
  if with_sft:
    demo_rows = x.is_demo & (x.sft_weight > 0)
    mask = x.response_mask & demo_rows[:, None]
    length = jnp.maximum(mask.sum(-1), 1).astype(x.logp.dtype)
    per_row = jnp.where(mask, -x.logp, 0.0).sum(-1) / length
    terms["sft"] = LossTerm(jnp.sum(jnp.where(demo_rows, x.sft_weight / q * per_row, 0.0)), zero)
  return terms


def micro_batch_terms(config: LossConfig, x: RowInputs) -> tuple[Terms, dict[str, Array]]:
  """The loss terms of one micro-batch (values of `LossTerm`s, not yet normalised across batches)."""
  metrics: dict[str, Array] = {}
  if config.mode is LossMode.PAPER:
    terms = _paper_terms(x, config.rl_width, config.algorithm is not None, config.sft)
  else:
    terms = {}
    if config.algorithm is not None:
      terms, metrics = _algorithm_terms(config.algorithm, x)
    if config.sft:
      if "sft" in terms:  # SRFT brings its own entropy-weighted SFT term
        raise ValueError(f"LossConfig.sft: {type(config.algorithm).__name__} already has an SFT term; set sft=False")
      terms = terms | _sft_term(x)
  return terms | _entropy_term(x, config.entropy_coeff), metrics


def combine_official(terms: Terms) -> Array:
  """Official per-micro-batch value: Σ_k total_k / max(denom_k, 1) (an empty SFT term is 0)."""
  return upge.total_loss(terms)


def combine_global(terms: Terms, denominators: dict[str, Array]) -> Array:
  """This micro-batch's share of the batch loss: Σ_k total_k / max(D_k, 1), D_k over the batch."""
  return sum((t.total / jnp.maximum(denominators[k], 1.0) for k, t in terms.items()),
             start=jnp.zeros(()))


def compute_advantages(estimator: AdvantageEstimator, *, given: Array, rewards: Array, group_ids: Array,
                       row_valid: Array) -> Array:
  """Â for every row of the batch.

  Args:
    estimator: which one.
    given, rewards: [N] float; group_ids: [N] int, dense 0..G-1, -1 on padding rows; row_valid: [N].

  Returns:
    [N] advantages, 0 on padding rows.
  """
  if estimator is AdvantageEstimator.GIVEN:
    return jnp.where(row_valid, given, 0.0)
  n = rewards.shape[0]
  # Padding rows go to one extra group (id n) so they never touch a real group's statistics.
  ids = jnp.where(row_valid, group_ids, n)
  adv = upge.grpo_advantages(rewards, ids, num_groups=n + 1,
                             normalize_by_std=estimator is AdvantageEstimator.GRPO)
  return jnp.where(row_valid, jax.lax.stop_gradient(adv), 0.0)
