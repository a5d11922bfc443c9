"""Named post-training algorithms as compositions of the four UPGE parts — the one table to scan.

  grad_uni = 1_stable · (1/π_ref) · Â · ∇π_θ        (PAPER.md §1.4, Eq. 6)

| name (class)          | rows      | π_ref                  | 1_stable                  | Â (caller)             | aggregation           |
|-----------------------|-----------|------------------------|---------------------------|------------------------|-----------------------|
| sft (Sft)             | all       | π_θ                    | none                      | ≡ 1                    | token-mean            |
| reinforce (Reinforce) | all       | π_θ                    | none                      | raw / ±1               | token-mean            |
| ppo (Ppo)             | all       | π_θold, ±20 clamp      | clip .2/.2, dual c=3      | GAE                    | token-mean            |
| grpo (Grpo)           | all       | π_θold, ±20 clamp      | clip .2/.2, dual c=3      | GRPO mean/std          | seq-mean-tok-mean     |
| dr_grpo (DrGrpo)      | all       | π_θold, ±20 clamp      | clip .2/.2, dual c=3      | mean only              | seq-mean-tok-sum-norm |
| dapo (Dapo)           | all       | π_θold, ±20 clamp      | clip .2/.28, dual c=10    | GRPO                   | token-mean            |
| cispo (Cispo)         | all       | π_θold, ±20 clamp      | weight sg(clip(r))/r      | GRPO                   | token-mean            |
| gspo (Gspo)           | all       | π_θ(π_old/π_θ)^{1/|τ|} | seq. clip 3e-4/4e-4       | GRPO                   | seq-mean-tok-mean|
| luffy (Luffy)         | on        | π_θold, no clamp       | none                      | union group, mean only | official Σ/T          |
|                       | demo      | 1, shaped π/(π+γ)      | none                      | union group, mean only | official Σ/T          |
| srft (Srft)           | on        | π_θ                    | none                      | .1e^{H_i} ok, else −1  | official Σ/T          |
|                       | demo      | 1, shaped π/(π+γ)      | none                      | union group            | official Σ/T          |
|                       | demo, SFT | π_θ                    | none                      | .5e^{−H_i}             | token-mean            |
| hpt_rl (HptRl)        | on        | π_θold, no clamp       | none                      | on-policy, mean only   | official Σ/T          |
| hpt_sft (HptSft)      | demo      | π_θ                    | none                      | ≡ sft_coef             | token-mean            |
| hpt (Hpt)             | both      | hpt_rl + hpt_sft       |                           |                        |                       |

Every algorithm is a frozen dataclass whose fields are exactly its hyperparameters, with one method

  loss_terms(inputs: LossInputs) -> (terms: dict[str, LossTerm], metrics: dict[str, Array])

Terms are `(total, denom)` pairs (see `aggregation`): sum them over micro-batches and devices, then
`aggregation.total_loss(terms)`. Metrics are per-micro-batch scalars. An entropy bonus
−entropy_coeff·H (needs `inputs.entropy`) is added as term "entropy" when `entropy_coeff != 0`;
LUFFY/SRFT/HPT default to the official 0.001 over all rows, token-mean. `width` (where present) is
the constant T of the seq-mean-token-sum-norm and official Σ/T modes (default: the padded width of
the micro-batch; set it to the maximum response length). Select by `AlgorithmName`
(or its spelling) with `make_algorithm`.
"""

import dataclasses
import enum
from typing import Protocol

import jax
import jax.numpy as jnp

from hpt_jax.typing import Array
from hpt_jax.upge import denominators, likelihood, masks
from hpt_jax.upge.aggregation import (Aggregation, LossTerm, aggregate, masked_mean, masked_mean_rows,
                                      parse_aggregation)
from hpt_jax.upge.inputs import LossInputs, Prepared, prepare

Terms = dict[str, LossTerm]
Metrics = dict[str, Array]

_frozen = dataclasses.dataclass(frozen=True, kw_only=True)


class Algorithm(Protocol):
  """What every named algorithm provides."""

  def loss_terms(self, inputs: LossInputs) -> tuple[Terms, Metrics]:
    ...


def _entropy_terms(x: Prepared, *, coeff: float, mode: Aggregation, width: int | None,
                   algorithm: str) -> Terms:
  """{"entropy": aggregate(−coeff·H)} over all rows, or {} when coeff == 0."""
  if coeff == 0.0:
    return {}
  if x.entropy is None:
    raise ValueError(f"inputs.entropy: required by {algorithm} when entropy_coeff != 0")
  return {"entropy": aggregate(-coeff * x.entropy, x.mask, mode=mode, width=width)}


def _needs(entropy_coeff: float, *fields: str) -> tuple[str, ...]:
  return fields + (("entropy",) if entropy_coeff != 0.0 else ())


def _clip_metrics(indicators: dict[str, Array], mask: Array, prefix: str = "") -> Metrics:
  return {f"{prefix}{name}_frac": masked_mean(v.astype(jnp.float32), mask)
          for name, v in indicators.items()}


@_frozen
class Sft:
  """SFT: token-mean NLL over all rows (π_ref = π_θ, Â ≡ 1, no mask)."""
  aggregation: Aggregation = Aggregation.TOKEN_MEAN
  width: int | None = None
  entropy_coeff: float = 0.0

  def loss_terms(self, inputs: LossInputs) -> tuple[Terms, Metrics]:
    x = prepare(inputs, needs=_needs(self.entropy_coeff), algorithm="Sft")
    terms = {"sft": aggregate(likelihood.token_nll(x.logp), x.mask, mode=self.aggregation, width=self.width)}
    terms |= _entropy_terms(x, coeff=self.entropy_coeff, mode=self.aggregation, width=self.width,
                            algorithm="Sft")
    return terms, {}


@_frozen
class Reinforce:
  """REINFORCE / vanilla policy gradient: −Â·ℓ (π_ref = π_θ, no mask; verl `gpg` loss)."""
  aggregation: Aggregation = Aggregation.TOKEN_MEAN
  width: int | None = None
  entropy_coeff: float = 0.0

  def loss_terms(self, inputs: LossInputs) -> tuple[Terms, Metrics]:
    x = prepare(inputs, needs=_needs(self.entropy_coeff, "advantages"), algorithm="Reinforce")
    loss, _ = masks.no_clip(denominators.on_policy_ratio(x.logp), x.advantages)
    terms = {"pg": aggregate(loss, x.mask, mode=self.aggregation, width=self.width)}
    terms |= _entropy_terms(x, coeff=self.entropy_coeff, mode=self.aggregation, width=self.width,
                            algorithm="Reinforce")
    return terms, {}


@_frozen
class _ClippedRatio:
  """Shared body of PPO, GRPO, Dr.GRPO, DAPO: token ratio r vs π_θold, clipped, verl `vanilla`."""
  epsilon_low: float = 0.2
  epsilon_high: float = 0.2
  dual_clip: float | None = 3.0
  log_ratio_clamp: float | None = denominators.DEFAULT_LOG_RATIO_CLAMP
  aggregation: Aggregation = Aggregation.TOKEN_MEAN
  width: int | None = None
  entropy_coeff: float = 0.0

  def loss_terms(self, inputs: LossInputs) -> tuple[Terms, Metrics]:
    name = type(self).__name__
    x = prepare(inputs, needs=_needs(self.entropy_coeff, "advantages", "old_logp"), algorithm=name)
    delta = denominators.log_ratio(x.logp, x.old_logp, clamp=self.log_ratio_clamp)
    loss, indicators = masks.ppo_clip(jnp.exp(delta), x.advantages, epsilon_low=self.epsilon_low,
                                      epsilon_high=self.epsilon_high, dual_clip=self.dual_clip)
    terms = {"pg": aggregate(loss, x.mask, mode=self.aggregation, width=self.width)}
    terms |= _entropy_terms(x, coeff=self.entropy_coeff, mode=self.aggregation, width=self.width,
                            algorithm=name)
    metrics = _clip_metrics(indicators, x.mask) | {"ppo_kl": masked_mean(-delta, x.mask)}
    return terms, metrics


@_frozen
class Ppo(_ClippedRatio):
  """PPO (verl `vanilla` defaults); pair with GAE advantages."""


@_frozen
class Grpo(_ClippedRatio):
  """GRPO: PPO's clipped ratio with GRPO advantages, per-sequence token mean (paper Eq. 16)."""
  aggregation: Aggregation = Aggregation.SEQ_MEAN_TOKEN_MEAN


@_frozen
class DrGrpo(_ClippedRatio):
  """Dr.GRPO: mean-only advantages, constant normaliser Σ/(G·T) (verl 0.9.1 seq-mean-token-sum-norm)."""
  aggregation: Aggregation = Aggregation.SEQ_MEAN_TOKEN_SUM_NORM


@_frozen
class Dapo(_ClippedRatio):
  """DAPO: clip-higher ε_high = 0.28, token-mean, dual clip c = 10 (verl DAPO recipe)."""
  epsilon_high: float = 0.28
  dual_clip: float | None = 10.0


@_frozen
class Cispo:
  """CISPO: −sg(clip(r, 1−ε_low, 1+ε_high))·Â·ℓ (verl `cispo`)."""
  epsilon_low: float = 0.2
  epsilon_high: float = 0.2
  log_ratio_clamp: float | None = denominators.DEFAULT_LOG_RATIO_CLAMP
  aggregation: Aggregation = Aggregation.TOKEN_MEAN
  width: int | None = None
  entropy_coeff: float = 0.0

  def loss_terms(self, inputs: LossInputs) -> tuple[Terms, Metrics]:
    x = prepare(inputs, needs=_needs(self.entropy_coeff, "advantages", "old_logp"), algorithm="Cispo")
    ratio = denominators.old_policy_ratio(x.logp, x.old_logp, clamp=self.log_ratio_clamp)
    loss, indicators = masks.cispo(ratio, x.logp, x.advantages, epsilon_low=self.epsilon_low,
                                   epsilon_high=self.epsilon_high)
    terms = {"pg": aggregate(loss, x.mask, mode=self.aggregation, width=self.width)}
    terms |= _entropy_terms(x, coeff=self.entropy_coeff, mode=self.aggregation, width=self.width,
                            algorithm="Cispo")
    return terms, _clip_metrics(indicators, x.mask)


@_frozen
class Gspo:
  """GSPO: sequence geometric-mean ratio, clipped per sequence (verl `gspo`, no dual clip)."""
  epsilon_low: float = 3e-4
  epsilon_high: float = 4e-4
  aggregation: Aggregation = Aggregation.SEQ_MEAN_TOKEN_MEAN
  width: int | None = None
  entropy_coeff: float = 0.0

  def loss_terms(self, inputs: LossInputs) -> tuple[Terms, Metrics]:
    x = prepare(inputs, needs=_needs(self.entropy_coeff, "advantages", "old_logp"), algorithm="Gspo")
    ratio = denominators.gspo_sequence_ratio(x.logp, x.old_logp, x.mask)
    loss, indicators = masks.ppo_clip(ratio, x.advantages, epsilon_low=self.epsilon_low,
                                      epsilon_high=self.epsilon_high)
    terms = {"pg": aggregate(loss, x.mask, mode=self.aggregation, width=self.width)}
    terms |= _entropy_terms(x, coeff=self.entropy_coeff, mode=self.aggregation, width=self.width,
                            algorithm="Gspo")
    return terms, _clip_metrics(indicators, x.mask)


def _shaped_off_policy_loss(x: Prepared, gamma: float) -> Array:
  """LUFFY's off-policy term −Â·π/(π+γ) (π_ref ≡ 1 with policy shaping). Returns [B, T]."""
  loss, _ = masks.no_clip(denominators.luffy_shaped_weight(x.logp, gamma=gamma), x.advantages)
  return loss


@_frozen
class Luffy:
  """LUFFY: on-policy ratio term on rollouts + shaped off-policy term on demos, official Σ/T.

  `clip_epsilon=None` is LUFFY's `loss_remove_clip=True`; a float clips the on-policy ratio at
  [1−ε, 1+ε] (no dual clip).
  """
  gamma: float = 0.1
  clip_epsilon: float | None = None
  width: int | None = None
  entropy_coeff: float = 0.001

  def loss_terms(self, inputs: LossInputs) -> tuple[Terms, Metrics]:
    x = prepare(inputs, needs=_needs(self.entropy_coeff, "advantages", "old_logp", "is_demo"),
                algorithm="Luffy")
    ratio = denominators.old_policy_ratio(x.logp, x.old_logp, clamp=None)
    if self.clip_epsilon is None:
      on_loss, indicators = masks.no_clip(ratio, x.advantages)
    else:
      on_loss, indicators = masks.ppo_clip(ratio, x.advantages, epsilon_low=self.clip_epsilon,
                                           epsilon_high=self.clip_epsilon)
    per_token = jnp.where(x.demo[:, None], _shaped_off_policy_loss(x, self.gamma), on_loss)
    terms = {"pg": aggregate(per_token, x.mask, mode=Aggregation.OFFICIAL_TOKEN_SUM_OVER_T, width=self.width)}
    terms |= _entropy_terms(x, coeff=self.entropy_coeff, mode=Aggregation.TOKEN_MEAN, width=None,
                            algorithm="Luffy")
    metrics = _clip_metrics(indicators, x.on_mask, prefix="on_") | {
        "off_policy_prob": masked_mean(jnp.exp(x.logp), x.demo_mask),
        "on_policy_prob": masked_mean(jnp.exp(x.logp), x.on_mask),
    }
    return terms, metrics


@_frozen
class Srft:
  """SRFT as re-implemented in the HPT repo (`srft_type="paper"`, ESTIMATORS.md §3.3).

  H_i = sg(token-mean entropy of row i). Demo rows: SFT −sft_weight·e^{−H_i}·ℓ (token-mean over demo
  tokens) plus LUFFY's shaped term −Â·π/(π+γ); on-policy rows: −Ã_i·ℓ with Ã_i = on_weight·e^{H_i} if
  the row is correct (score == 1) else −1. The RL terms share the official Σ/T.
  """
  gamma: float = 0.1
  sft_weight: float = 0.5
  on_weight: float = 0.1
  width: int | None = None
  entropy_coeff: float = 0.001

  def loss_terms(self, inputs: LossInputs) -> tuple[Terms, Metrics]:
    x = prepare(inputs, needs=("advantages", "is_demo", "entropy", "scores"), algorithm="Srft")
    row_entropy = jax.lax.stop_gradient(masked_mean_rows(x.entropy, x.mask))  # [B]
    correct = x.scores == 1.0
    on_adv = jnp.where(correct, self.on_weight * jnp.exp(row_entropy), -1.0)  # [B]
    on_loss, _ = masks.no_clip(denominators.on_policy_ratio(x.logp),
                               jnp.broadcast_to(on_adv[:, None], x.logp.shape))
    per_token = jnp.where(x.demo[:, None], _shaped_off_policy_loss(x, self.gamma), on_loss)
    sft_weight = self.sft_weight * jnp.exp(-row_entropy)  # [B]
    terms = {
        "pg": aggregate(per_token, x.mask, mode=Aggregation.OFFICIAL_TOKEN_SUM_OVER_T, width=self.width),
        "sft": aggregate(-sft_weight[:, None] * x.logp, x.demo_mask, mode=Aggregation.TOKEN_MEAN),
    }
    terms |= _entropy_terms(x, coeff=self.entropy_coeff, mode=Aggregation.TOKEN_MEAN, width=None,
                            algorithm="Srft")
    return terms, {"row_entropy": masked_mean(row_entropy, x.mask.any(-1))}


@_frozen
class HptRl:
  """HPT's RL branch: −Â·r on on-policy rows, no clip, no ±20 clamp, official Σ/T (Dr.GRPO-style)."""
  width: int | None = None

  def rl_term(self, x: Prepared) -> LossTerm:
    ratio = denominators.old_policy_ratio(x.logp, x.old_logp, clamp=None)
    loss, _ = masks.no_clip(ratio, x.advantages)
    return aggregate(loss, x.on_mask, mode=Aggregation.OFFICIAL_TOKEN_SUM_OVER_T, width=self.width)

  def loss_terms(self, inputs: LossInputs) -> tuple[Terms, Metrics]:
    x = prepare(inputs, needs=("advantages", "old_logp", "is_demo"), algorithm="HptRl")
    return {"rl": self.rl_term(x)}, {}


@_frozen
class HptSft:
  """HPT's SFT branch: sft_coef·token-mean NLL over demonstration rows (0 if there are none)."""
  sft_coef: float = 1.0

  def sft_term(self, x: Prepared) -> LossTerm:
    return aggregate(-self.sft_coef * x.logp, x.demo_mask, mode=Aggregation.TOKEN_MEAN)

  def loss_terms(self, inputs: LossInputs) -> tuple[Terms, Metrics]:
    x = prepare(inputs, needs=("is_demo",), algorithm="HptSft")
    return {"sft": self.sft_term(x)}, {}


@_frozen
class Hpt:
  """HPT's actor loss on a mixed micro-batch: HptRl + HptSft − entropy_coeff·token-mean H (all rows)."""
  sft_coef: float = 1.0
  width: int | None = None
  entropy_coeff: float = 0.001

  def loss_terms(self, inputs: LossInputs) -> tuple[Terms, Metrics]:
    x = prepare(inputs, needs=_needs(self.entropy_coeff, "advantages", "old_logp", "is_demo"), algorithm="Hpt")
    terms = {"rl": HptRl(width=self.width).rl_term(x), "sft": HptSft(sft_coef=self.sft_coef).sft_term(x)}
    terms |= _entropy_terms(x, coeff=self.entropy_coeff, mode=Aggregation.TOKEN_MEAN, width=None,
                            algorithm="Hpt")
    metrics = {"demo_tokens": x.demo_mask.sum(), "on_tokens": x.on_mask.sum()}
    return terms, metrics


class AlgorithmName(enum.Enum):
  SFT = "sft"
  REINFORCE = "reinforce"
  PPO = "ppo"
  GRPO = "grpo"
  DR_GRPO = "dr_grpo"
  DAPO = "dapo"
  CISPO = "cispo"
  GSPO = "gspo"
  LUFFY = "luffy"
  SRFT = "srft"
  HPT_RL = "hpt_rl"
  HPT_SFT = "hpt_sft"
  HPT = "hpt"


ALGORITHMS: dict[AlgorithmName, type] = {
    AlgorithmName.SFT: Sft,
    AlgorithmName.REINFORCE: Reinforce,
    AlgorithmName.PPO: Ppo,
    AlgorithmName.GRPO: Grpo,
    AlgorithmName.DR_GRPO: DrGrpo,
    AlgorithmName.DAPO: Dapo,
    AlgorithmName.CISPO: Cispo,
    AlgorithmName.GSPO: Gspo,
    AlgorithmName.LUFFY: Luffy,
    AlgorithmName.SRFT: Srft,
    AlgorithmName.HPT_RL: HptRl,
    AlgorithmName.HPT_SFT: HptSft,
    AlgorithmName.HPT: Hpt,
}


def parse_algorithm_name(name: "str | AlgorithmName") -> AlgorithmName:
  """Maps a spelling to an `AlgorithmName`; unknown names list the known ones."""
  if isinstance(name, AlgorithmName):
    return name
  try:
    return AlgorithmName(name)
  except ValueError:
    known = ", ".join(n.value for n in AlgorithmName)
    raise ValueError(f"algorithm: unknown name {name!r}; known: {known}") from None


def make_algorithm(name: "str | AlgorithmName", **hyperparameters) -> Algorithm:
  """Builds the named algorithm; `hyperparameters` are its dataclass fields (others raise TypeError).

  An `aggregation` given as a string is parsed with `parse_aggregation`.
  """
  cls = ALGORITHMS[parse_algorithm_name(name)]
  if isinstance(hyperparameters.get("aggregation"), str):
    hyperparameters["aggregation"] = parse_aggregation(hyperparameters["aggregation"])
  return cls(**hyperparameters)
