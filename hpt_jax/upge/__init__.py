"""hpt_jax.upge: the Unified Policy Gradient Estimator as pure functions of arrays.

  grad_uni = 1_stable · (1/π_ref) · Â · ∇π_θ            (arXiv 2509.04419, Eq. 6)

Modules, one concept each:
  advantages    -- Â: GRPO, Dr.GRPO, RLOO, REINFORCE, REINFORCE++-baseline, SFT, union group, GAE.
  denominators  -- 1/π_ref as importance weights: on-policy, π_θold ratio (±20 clamp), offline ≡ 1,
                   GSPO sequence ratio, LUFFY shaping π/(π+γ).
  masks         -- 1_stable: none, PPO clip (asymmetric ε, dual clip), CISPO; clip indicators.
  likelihood    -- token- and sequence-level log-likelihood.
  aggregation   -- (total, denom) reductions (verl modes + the official LUFFY/HPT Σ/T).
  logprobs      -- token log-probs / entropy from logits, or chunked from hidden states.
  kl            -- k1 / abs / k2 / k3 penalties.
  inputs        -- `LossInputs`, the micro-batch arrays every algorithm consumes.
  algorithms    -- the named algorithms as compositions (one table), `make_algorithm`.
"""

from hpt_jax.upge.advantages import (gae_advantages, group_mean_std, grpo_advantages, masked_whiten,
                                     reinforce_advantages, reinforce_pp_baseline_advantages,
                                     rloo_advantages, sft_advantages, union_group_advantages)
from hpt_jax.upge.aggregation import (Aggregation, LossTerm, add_terms, aggregate, finalize, masked_mean,
                                      masked_mean_rows, parse_aggregation, total_loss)
from hpt_jax.upge.algorithms import (ALGORITHMS, Algorithm, AlgorithmName, Cispo, Dapo, DrGrpo, Grpo, Gspo,
                                     Hpt, HptRl, HptSft, Luffy, Ppo, Reinforce, Sft, Srft, make_algorithm,
                                     parse_algorithm_name)
from hpt_jax.upge.denominators import (gspo_sequence_ratio, log_ratio, luffy_shaped_weight, offline_weight,
                                       old_policy_ratio, on_policy_ratio)
from hpt_jax.upge.inputs import LossInputs
from hpt_jax.upge.kl import KLPenalty, kl_penalty, parse_kl_penalty
from hpt_jax.upge.likelihood import sequence_log_likelihood, token_log_likelihood, token_nll
from hpt_jax.upge.logprobs import chunked_token_logprobs, entropy_from_logits, token_logprobs
from hpt_jax.upge.masks import cispo, no_clip, ppo_clip

__all__ = [
    "ALGORITHMS", "Aggregation", "Algorithm", "AlgorithmName", "Cispo", "Dapo", "DrGrpo", "Grpo", "Gspo",
    "Hpt", "HptRl", "HptSft", "KLPenalty", "LossInputs", "LossTerm", "Luffy", "Ppo", "Reinforce", "Sft",
    "Srft", "add_terms", "aggregate", "chunked_token_logprobs", "cispo", "entropy_from_logits", "finalize",
    "gae_advantages", "group_mean_std", "grpo_advantages", "gspo_sequence_ratio", "kl_penalty", "log_ratio",
    "luffy_shaped_weight", "make_algorithm", "masked_mean", "masked_mean_rows", "masked_whiten", "no_clip",
    "offline_weight", "old_policy_ratio", "on_policy_ratio", "parse_aggregation", "parse_algorithm_name",
    "parse_kl_penalty", "ppo_clip", "reinforce_advantages", "reinforce_pp_baseline_advantages",
    "rloo_advantages", "sequence_log_likelihood", "sft_advantages", "token_log_likelihood",
    "token_logprobs", "token_nll", "total_loss", "union_group_advantages",
]
