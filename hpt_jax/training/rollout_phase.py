"""One step's experience: questions → rollouts → rewards → gate → training rows.

This is the host side of a training step, before anything is differentiated:
  1. the sampler draws n responses per question (with their log-probs under the sampling policy);
  2. the reward pool scores them, each host its own block of answers, gathered back (per-answer
     timeouts never stall the step);
  3. the rows are chosen by the phase's `RowSource` — HPT's gate per question, all rollouts (pure
     RL baselines), all demonstrations (SFT), or both with the demonstration in its question's
     group (LUFFY, SRFT);
  4. `hybrid.route` lays them out as `Rows` for the train step's packer.
Every array here is NumPy and identical on every host (see `distributed.py`), so the gate's
decisions, and hence the batch shapes, agree across processes.

The sampler's log-probs are kept as π_old of each rollout token: they were computed with exactly
the parameters the step starts from, so no extra forward pass is needed while the policy has not
moved (the train step uses stop_gradient(log π) for the first mini-batch and these afterwards).
Letters: Q questions, n rollouts per question.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from hpt_jax import hybrid
from hpt_jax import sampling
from hpt_jax.training import distributed
from hpt_jax.training.batching import Rows
from hpt_jax.training.config import RowSource
from hpt_jax.training.metrics import rollout_metrics


@dataclasses.dataclass(frozen=True)
class Question:
  """One training question, tokenised.

  Attributes:
    index: the question's row in the training set (stable id: gate history, sampler keys).
    prompt: [P] int32 prompt tokens (chat template applied).
    demo: [T*] int32 demonstration tokens with EOS appended, or None.
    ground_truth: the reference answer(s) for the verifier.
  """
  index: int
  prompt: np.ndarray
  demo: np.ndarray | None
  ground_truth: Any


@dataclasses.dataclass(frozen=True)
class Experience:
  """The rows of one step plus what to log about how they were made."""
  rows: Rows
  gate_state: hybrid.GateState | None
  metrics: dict[str, float]
  sampled_tokens: int


def _fixed_decision(source: RowSource, q: int, demo_weight: float) -> hybrid.GateDecision:
  """A routing that does not depend on correctness (every source but GATE)."""
  ones, zeros = np.ones((q,)), np.zeros((q,))
  rl = source in (RowSource.ROLLOUTS, RowSource.ROLLOUTS_AND_DEMOS)
  demo = source in (RowSource.DEMOS, RowSource.ROLLOUTS_AND_DEMOS)
  return hybrid.GateDecision(
      success_rate=zeros, alpha=ones if rl else zeros, beta=ones if demo else zeros,
      keep_rollouts=np.full((q,), rl), add_demo=np.full((q,), demo),
      # LUFFY/SRFT act on the demonstration through their own off-policy term; SFT through NLL.
      demo_sft_weight=ones * demo_weight if source is RowSource.DEMOS else zeros,
      demo_off_policy_weight=ones if source is RowSource.ROLLOUTS_AND_DEMOS else zeros)


def collect(*, params: Any, questions: Sequence[Question], source: RowSource,
            sampler: sampling.Sampler | None, strategy: sampling.Strategy | None,
            num_samples: int, max_new_tokens: int, seed: int, score_fn,
            gate: hybrid.GateTransform | None, gate_state: hybrid.GateState | None) -> Experience:
  """Builds the rows of one step.

  Args:
    params: the policy parameters the sampler reads.
    questions: Q questions of this step (the same list on every host).
    source: which rows to build.
    sampler, strategy: the rollout engine and sampling distribution (unused for DEMOS).
    num_samples: n rollouts per question.
    max_new_tokens: response length cap.
    seed: the step's sampling seed; with each question's index it fixes every rollout.
    score_fn: `(responses: list[str], ground_truths: list) -> (scores [Q·n] float, timeouts int)`.
    gate: HPT's gate transform (GATE only).
    gate_state: its state before this step (GATE only).

  Returns:
    The `Experience`; `gate_state` is the updated state (unchanged for other sources).
  """
  q = len(questions)
  prompts = [np.asarray(x.prompt, np.int32) for x in questions]
  demos = [None if x.demo is None else np.asarray(x.demo, np.int32) for x in questions]
  if source is RowSource.DEMOS:
    decision = _fixed_decision(source, q, 1.0)
    rows = hybrid.route(decision, prompts=prompts, rollouts=[[] for _ in range(q)],
                        rollout_rewards=[np.zeros((0,)) for _ in range(q)], demos=demos)
    metrics = {"gate/sft_fraction": 1.0, "gate/off_example_ratio": 1.0,
               "gate/sft_rows": float(rows.num_rows), "gate/rl_rows": 0.0}
    return Experience(rows=rows, gate_state=gate_state, metrics=metrics, sampled_tokens=0)

  start = time.perf_counter()
  rollouts = sampler.generate(params, prompts, strategy=strategy, max_new_tokens=max_new_tokens,
                              num_samples=num_samples, seed=seed,
                              prompt_ids=[x.index for x in questions])
  sample_seconds = time.perf_counter() - start
  out = rollouts.output
  lengths = np.asarray(out.lengths).reshape(q, num_samples)
  tokens = np.asarray(out.tokens).reshape(q, num_samples, -1)
  logp = np.asarray(out.logprobs).reshape(q, num_samples, -1)

  start = time.perf_counter()
  truths = [x.ground_truth for x in questions for _ in range(num_samples)]
  # Each host scores its own block of the answers; the blocks are gathered in host order, so every
  # host ends with the same scores a single host would compute.
  block = distributed.host_block(len(truths))
  local_scores, local_timeouts = score_fn(list(rollouts.texts[block]), truths[block])
  scores = distributed.allgather_blocks(np.asarray(local_scores, np.float64))
  timeouts = int(distributed.allgather_blocks(np.asarray([local_timeouts], np.int64)).sum())
  reward_seconds = time.perf_counter() - start
  scores = np.asarray(scores, np.float64).reshape(q, num_samples)
  correct = scores >= 1.0

  if source is RowSource.GATE:
    decision, gate_state = gate.update(gate_state, question_ids=np.asarray([x.index for x in questions]),
                                       correct=correct.sum(axis=1), num_rollouts=num_samples)
  else:
    decision = _fixed_decision(source, q, 0.0)
  # Valid tokens only (up to and including EOS); the sampler always emits at least one.
  responses = [[tokens[i, s, :lengths[i, s]] for s in range(num_samples)] for i in range(q)]
  old_logp = [[logp[i, s, :lengths[i, s]] for s in range(num_samples)] for i in range(q)]
  rows = hybrid.route(decision, prompts=prompts, rollouts=responses, rollout_rewards=list(scores),
                      demos=demos, rollout_old_logp=old_logp,
                      demo_joins_group=source is RowSource.ROLLOUTS_AND_DEMOS)
  num_demo = int(rows.is_demo.sum())
  metrics = rollout_metrics(
      rewards=scores, correct=correct, response_lengths=lengths,
      truncated=np.asarray(out.finish_reason).reshape(q, num_samples) == int(sampling.FinishReason.LENGTH),
      to_sft=decision.add_demo, num_rl_rows=rows.num_rows - num_demo, num_sft_rows=num_demo,
      timeouts=timeouts)
  sampled = int(lengths.sum())
  metrics["perf/sampling_seconds"] = sample_seconds
  metrics["perf/sampling_tokens_per_s"] = sampled / max(sample_seconds, 1e-9)
  metrics["perf/reward_seconds"] = reward_seconds
  return Experience(rows=rows, gate_state=gate_state, metrics=metrics, sampled_tokens=sampled)
