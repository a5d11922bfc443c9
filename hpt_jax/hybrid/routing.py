"""From a gate decision to training rows: keep the rollouts (RL) and/or add the demonstration.

For question q (index in the batch) with decision (α_q, β_q):
  * α_q > 0: its n rollouts become RL rows with group id q, so their advantages come from their
    own group only; `rl_weight` = α_q, `sft_weight` = 0;
  * β_q > 0: one demonstration row with `rl_weight` = β_q·w_off (off-policy RL on the demo) and
    `sft_weight` = β_q·w_sft. By default it is its own group (id Q + q): for HPT the rollouts are
    gone, and the official code gives such a singleton group mean 0. `demo_joins_group=True` puts it
    in group q instead, beside the rollouts, which is LUFFY's and SRFT's union group;
  * α_q = β_q = 0 (a soft gate may do that): the question contributes nothing.
Rows come question by question, rollouts first, so the order is deterministic.
Letters: Q questions, n rollouts per question.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hpt_jax.hybrid.gate import GateDecision
from hpt_jax.training.batching import Rows


def route(
    decision: GateDecision,
    *,
    prompts: Sequence[np.ndarray],
    rollouts: Sequence[Sequence[np.ndarray]],
    rollout_rewards: Sequence[np.ndarray],
    demos: Sequence[np.ndarray | None],
    rollout_old_logp: Sequence[Sequence[np.ndarray]] | None = None,
    demo_rewards: np.ndarray | None = None,
    demo_joins_group: bool = False,
) -> Rows:
  """Builds the batch rows of Q questions.

  Args:
    decision: the gate's `GateDecision` for the Q questions.
    prompts: Q int arrays, prompt token ids.
    rollouts: Q lists of n_q int arrays, the sampled responses.
    rollout_rewards: Q float arrays [n_q], reward of each rollout.
    demos: Q int arrays (demonstration response, EOS included) or None where a question has none;
      a question routed to the demonstration without one is an error.
    rollout_old_logp: optional Q lists of n_q float arrays, log π_old of each rollout token. Demo
      rows then get old log-probs of 0, i.e. π_old ≡ 1, the offline reference of LUFFY.
    demo_rewards: [Q] reward of each demonstration; default 1 (demonstrations are verified).
    demo_joins_group: put the demonstration in its question's group (LUFFY/SRFT).

  Returns:
    `Rows`.
  """
  q_count = len(prompts)
  for name, seq in (("rollouts", rollouts), ("rollout_rewards", rollout_rewards), ("demos", demos)):
    if len(seq) != q_count:
      raise ValueError(f"{name} has {len(seq)} questions, prompts has {q_count}")
  if decision.alpha.shape != (q_count,):
    raise ValueError(f"decision covers {decision.alpha.shape[0]} questions, prompts has {q_count}")
  if demo_rewards is None:
    demo_rewards = np.ones((q_count,), np.float64)
  with_logp = rollout_old_logp is not None

  out_prompts, out_resp, out_logp = [], [], []
  is_demo, group_ids, q_index, rewards, rl_w, sft_w = [], [], [], [], [], []

  def add(prompt, resp, logp, demo, group, q, reward, rl, sft):
    out_prompts.append(np.asarray(prompt))
    out_resp.append(np.asarray(resp))
    out_logp.append(logp)
    is_demo.append(demo)
    group_ids.append(group)
    q_index.append(q)
    rewards.append(reward)
    rl_w.append(rl)
    sft_w.append(sft)

  for q in range(q_count):
    if decision.keep_rollouts[q]:
      resp_q, rew_q = rollouts[q], np.asarray(rollout_rewards[q])
      if rew_q.shape != (len(resp_q),):
        raise ValueError(f"rollout_rewards[{q}] has shape {rew_q.shape}, question has {len(resp_q)} rollouts")
      for i, resp in enumerate(resp_q):
        logp = np.asarray(rollout_old_logp[q][i], np.float32) if with_logp else None
        add(prompts[q], resp, logp, False, q, q, float(rew_q[i]), float(decision.alpha[q]), 0.0)
    if decision.add_demo[q]:
      if demos[q] is None:
        raise ValueError(f"demos[{q}]: question {q} was routed to its demonstration but has none")
      demo = np.asarray(demos[q])
      logp = np.zeros(demo.shape, np.float32) if with_logp else None
      add(prompts[q], demo, logp, True, q if demo_joins_group else q_count + q, q, float(demo_rewards[q]),
          float(decision.demo_off_policy_weight[q]), float(decision.demo_sft_weight[q]))
  if not out_prompts:
    raise ValueError("decision: no question contributes a row (every α and β is 0)")
  return Rows(
      prompts=out_prompts,
      responses=out_resp,
      old_logp=out_logp if with_logp else None,
      is_demo=np.array(is_demo, bool),
      group_ids=np.array(group_ids, np.int64),
      question_index=np.array(q_index, np.int64),
      rewards=np.array(rewards, np.float64),
      rl_weight=np.array(rl_w, np.float64),
      sft_weight=np.array(sft_w, np.float64),
  )
