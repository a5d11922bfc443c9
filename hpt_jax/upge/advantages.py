"""Advantage estimates Â (UPGE part 3) from outcome rewards, integer group ids or token rewards.

Outcome estimators take one scalar score per row, `scores: [B]` (= Σ_t token_level_rewards of verl),
and integer `group_ids: [B]` in [0, num_groups) naming the prompt each row answers; they return one
advantage per row, `[B]`, which the losses broadcast over the response tokens. Group statistics use
`jax.ops.segment_sum` with a static `num_groups`, so every estimator works under `jit` and `vmap`.

Singleton groups follow verl 0.9.1 (ESTIMATORS.md §1.4, §6): GRPO uses μ=0, σ=1 there, RLOO keeps the
raw score, REINFORCE++-baseline uses μ=0.
"""

import jax
import jax.numpy as jnp
import numpy as np

from hpt_jax.typing import Array
from hpt_jax.upge import checks

# verl builds the singleton σ=1 as a float32 tensor, so σ + ε is float32(1 + 1e-6) even in float64
# runs; we keep that constant to reproduce its numbers exactly.
_VERL_WHITEN_EPS = 1e-8


def _check_outcome(scores: Array, group_ids: Array, num_groups: int) -> None:
  checks.check_rank(scores, rank=1, name="scores")
  checks.check_floating(scores, name="scores")
  checks.check_group_ids(group_ids, num_groups=num_groups, batch=scores.shape[0])


def group_sums(values: Array, group_ids: Array, *, num_groups: int) -> tuple[Array, Array]:
  """Per-row group count and group sum.

  Args:
    values: [B] float.
    group_ids: [B] int in [0, num_groups).
    num_groups: static number of groups G.

  Returns:
    (count [B], total [B]): size and sum of the group of each row.
  """
  count = jax.ops.segment_sum(jnp.ones_like(values), group_ids, num_segments=num_groups)
  total = jax.ops.segment_sum(values, group_ids, num_segments=num_groups)
  return count[group_ids], total[group_ids]


def group_mean_std(scores: Array, group_ids: Array, *, num_groups: int) -> tuple[Array, Array, Array]:
  """Group mean and unbiased std per row, singleton groups given μ=0, σ=1 (verl `grpo`).

  Returns:
    (mean [B], std [B], count [B]).
  """
  count, total = group_sums(scores, group_ids, num_groups=num_groups)
  mean = total / count
  _, sq = group_sums((scores - mean) ** 2, group_ids, num_groups=num_groups)
  # torch.std is unbiased (N − 1); singletons are special-cased below so the max only avoids 0/0.
  std = jnp.sqrt(sq / jnp.maximum(count - 1, 1))
  single = count == 1
  return jnp.where(single, 0.0, mean), jnp.where(single, 1.0, std), count


def grpo_advantages(scores: Array, group_ids: Array, *, num_groups: int, normalize_by_std: bool = True,
                    epsilon: float = 1e-6) -> Array:
  """GRPO (and Dr.GRPO with `normalize_by_std=False`) group-relative advantages.

  Â_i = (s_i − μ_g) / (σ_g + ε)  or  s_i − μ_g,  σ unbiased; a singleton group has μ=0, σ=1, so
  Â_i = s_i / float32(1 + ε) (verl). Â_SRFT / Â_LUFFY are this estimator over the union group
  (demonstration rows share their prompt's id): see `union_group_advantages`.

  Args:
    scores: [B] outcome reward per row.
    group_ids: [B] int prompt id per row, in [0, num_groups).
    num_groups: static G.
    normalize_by_std: divide by σ_g + ε (GRPO) or not (Dr.GRPO).
    epsilon: ε.

  Returns:
    [B] advantages.
  """
  _check_outcome(scores, group_ids, num_groups)
  mean, std, count = group_mean_std(scores, group_ids, num_groups=num_groups)
  centred = scores - mean
  if not normalize_by_std:
    return centred
  singleton_denom = np.float32(1.0) + np.float32(epsilon)
  denom = jnp.where(count == 1, jnp.asarray(singleton_denom, scores.dtype), std + epsilon)
  return centred / denom


def union_group_advantages(scores: Array, group_ids: Array, is_demo: Array, *, num_groups: int,
                           normalize_by_std: bool = False, epsilon: float = 1e-6) -> Array:
  """LUFFY/SRFT union-group advantages: GRPO statistics over G_on ∪ G_off.

  Demonstration rows carry their prompt's group id, so the group mean/std include the demonstration's
  reward (LUFFY runs `grpo` over all 8 rows incl. the demo, with `grpo_use_std=False`).

  Args:
    scores: [B]; group_ids: [B] int; is_demo: [B] bool (validated, marks G_off rows).

  Returns:
    [B] advantages for on-policy and demonstration rows alike.
  """
  checks.as_mask(is_demo, shape=np.shape(scores), name="is_demo")
  return grpo_advantages(scores, group_ids, num_groups=num_groups, normalize_by_std=normalize_by_std,
                         epsilon=epsilon)


def rloo_advantages(scores: Array, group_ids: Array, *, num_groups: int) -> Array:
  """RLOO leave-one-out baseline: Â_i = s_i − mean_{j≠i} s_j = (n s_i − Σ_g s)/(n − 1).

  A singleton group keeps its raw score (verl `rloo`; `rloo_vectorized` would give 0).

  Returns:
    [B] advantages.
  """
  _check_outcome(scores, group_ids, num_groups)
  count, total = group_sums(scores, group_ids, num_groups=num_groups)
  loo = (count * scores - total) / jnp.maximum(count - 1, 1)
  return jnp.where(count > 1, loo, scores)


def reinforce_advantages(scores: Array, *, plus_minus_one: bool = False) -> Array:
  """REINFORCE advantages: the raw score, or ±1 (+1 for a positive score, −1 otherwise).

  Returns:
    [B] advantages.
  """
  checks.check_rank(scores, rank=1, name="scores")
  checks.check_floating(scores, name="scores")
  if plus_minus_one:
    return jnp.where(scores > 0, 1.0, -1.0).astype(scores.dtype)
  return scores


def sft_advantages(batch: int, *, dtype=jnp.float32) -> Array:
  """Â_SFT ≡ 1 for every demonstration row. Returns [B] ones."""
  return jnp.ones((batch,), dtype)


def masked_whiten(values: Array, mask: Array) -> Array:
  """verl `masked_whiten`: (v − μ)·rsqrt(var + 1e-8) over all masked entries, var unbiased.

  μ = Σ v m / (Σ m + 1e-8) and var = masked_mean((v − μ)²)·N/(N − 1), as verl computes them.

  Args:
    values: [B, T]; mask: [B, T] bool.

  Returns:
    [B, T], not re-masked.
  """
  m = mask.astype(values.dtype)
  n = m.sum()
  mean = jnp.where(mask, values, 0.0).sum() / (n + _VERL_WHITEN_EPS)
  var = jnp.where(mask, (values - mean) ** 2, 0.0).sum() / (n + _VERL_WHITEN_EPS)
  var = var * n / jnp.maximum(n - 1, 1)
  return (values - mean) * jax.lax.rsqrt(var + _VERL_WHITEN_EPS)


def reinforce_pp_baseline_advantages(scores: Array, group_ids: Array, response_mask: Array, *,
                                     num_groups: int) -> Array:
  """REINFORCE++-baseline: group-mean-centred score (singleton μ=0), tiled over T, batch-whitened.

  Args:
    scores: [B]; group_ids: [B] int; response_mask: [B, T].

  Returns:
    [B, T] token advantages, zero outside the mask.
  """
  _check_outcome(scores, group_ids, num_groups)
  checks.check_rank(response_mask, rank=2, name="response_mask")
  mask = checks.as_mask(response_mask, shape=(scores.shape[0], response_mask.shape[1]), name="response_mask")
  count, total = group_sums(scores, group_ids, num_groups=num_groups)
  centred = scores - jnp.where(count > 1, total / count, 0.0)
  tiled = jnp.where(mask, centred[:, None], 0.0)
  return jnp.where(mask, masked_whiten(tiled, mask), 0.0)


def gae_advantages(token_rewards: Array, values: Array, response_mask: Array, *, gamma: float,
                   lambda_: float) -> tuple[Array, Array]:
  """Generalised advantage estimation (verl `compute_gae_advantage_return`).

  Backward over t: δ_t = r_t + γ V_next − V_t, g_t = δ_t + γλ g_next, where V_next and g_next only
  advance at valid tokens (x_next ← m_t x_t + (1 − m_t) x_next) and a padded position reports the
  carried g_next (0 for right padding). Returns = g + V; advantages =
  masked_whiten(g) over the batch.

  Args:
    token_rewards: [B, T]; values: [B, T]; response_mask: [B, T].
    gamma: discount γ; lambda_: GAE λ.

  Returns:
    (advantages [B, T], returns [B, T]); advantages are whitened but, as in verl, not re-masked.
  """
  checks.check_rank(token_rewards, rank=2, name="token_rewards")
  checks.check_floating(token_rewards, name="token_rewards")
  checks.check_shape(values, shape=token_rewards.shape, name="values")
  mask = checks.as_mask(response_mask, shape=token_rewards.shape, name="response_mask")
  m = mask.astype(token_rewards.dtype)

  def step(carry, xs):
    next_value, next_gae = carry
    r_t, v_t, m_t = xs
    delta = r_t + gamma * next_value - v_t
    gae = delta + gamma * lambda_ * next_gae
    # Padded positions leave the carried value and advantage untouched (and report the carried g).
    carry = (v_t * m_t + (1 - m_t) * next_value, gae * m_t + (1 - m_t) * next_gae)
    return carry, carry[1]

  zeros = jnp.zeros(token_rewards.shape[:1], token_rewards.dtype)
  _, gae_rev = jax.lax.scan(step, (zeros, zeros), (token_rewards.T, values.T, m.T), reverse=True)
  gae = gae_rev.T  # [B, T]
  returns = gae + values
  return masked_whiten(gae, mask), returns
