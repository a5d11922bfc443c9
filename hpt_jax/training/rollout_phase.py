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
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from hpt_jax import hybrid
from hpt_jax import sampling
from hpt_jax.training import distributed
from hpt_jax.training.batching import Rows
from hpt_jax.training.config import GroupFilter, RowSource
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


@dataclasses.dataclass(frozen=True, kw_only=True)
class DynamicSampling:
  """Keep sampling until the step has `target` informative groups, or `max_tries` batches were drawn.

  Attributes:
    group_filter: which groups to drop.
    max_tries: cap on the question batches sampled per step (1 = no refill); when it is reached,
      the latest dropped groups fill the rest of the batch (they add no policy gradient), so the
      step always has the configured number of questions.
    next_questions: draws the next batch of questions (the same on every host).
  """
  group_filter: GroupFilter
  max_tries: int
  next_questions: Callable[[], list[Question]]


def try_seed(seed: int, attempt: int) -> int:
  """The sampling seed of refill `attempt` of a step whose seed is `seed` (attempt 0 keeps it)."""
  if attempt == 0:
    return seed
  return int(np.random.SeedSequence([seed, attempt]).generate_state(1)[0] & 0x7FFFFFFF)


@dataclasses.dataclass(frozen=True)
class _Sampled:
  """Rollouts of Q questions: per-question arrays [Q, n(, T)] and the seconds spent."""
  questions: list[Question]
  tokens: np.ndarray
  logp: np.ndarray
  lengths: np.ndarray
  truncated: np.ndarray
  scores: np.ndarray
  timeouts: int
  sample_seconds: float
  reward_seconds: float
  generated_tokens: int  # tokens sampled for the whole batch (kept by `take`: a cost, not a row count)

  def take(self, keep: np.ndarray) -> _Sampled:
    return dataclasses.replace(self, questions=[self.questions[i] for i in keep], tokens=self.tokens[keep],
                               logp=self.logp[keep], lengths=self.lengths[keep],
                               truncated=self.truncated[keep], scores=self.scores[keep])

  @staticmethod
  def concat(parts: Sequence[_Sampled]) -> _Sampled:
    cat = lambda name: np.concatenate([getattr(x, name) for x in parts])
    return _Sampled(questions=[q for x in parts for q in x.questions], tokens=cat("tokens"), logp=cat("logp"),
                    lengths=cat("lengths"), truncated=cat("truncated"), scores=cat("scores"),
                    timeouts=sum(x.timeouts for x in parts), sample_seconds=sum(x.sample_seconds for x in parts),
                    reward_seconds=sum(x.reward_seconds for x in parts),
                    generated_tokens=sum(x.generated_tokens for x in parts))


def _sample_and_score(*, params, questions, sampler, strategy, num_samples, max_new_tokens, seed,
                      score_fn) -> _Sampled:
  q = len(questions)
  prompts = [np.asarray(x.prompt, np.int32) for x in questions]
  start = time.perf_counter()
  rollouts = sampler.generate(params, prompts, strategy=strategy, max_new_tokens=max_new_tokens,
                              num_samples=num_samples, seed=seed,
                              prompt_ids=[x.index for x in questions])
  sample_seconds = time.perf_counter() - start
  out = rollouts.output

  start = time.perf_counter()
  truths = [x.ground_truth for x in questions for _ in range(num_samples)]
  # Each host scores its own block of the answers; the blocks are gathered in host order, so every
  # host ends with the same scores a single host would compute.
  block = distributed.host_block(len(truths))
  local_scores, local_timeouts = score_fn(list(rollouts.texts[block]), truths[block])
  scores = distributed.allgather_blocks(np.asarray(local_scores, np.float64))
  timeouts = int(distributed.allgather_blocks(np.asarray([local_timeouts], np.int64)).sum())
  reward_seconds = time.perf_counter() - start
  return _Sampled(
      questions=list(questions), tokens=np.asarray(out.tokens).reshape(q, num_samples, -1),
      logp=np.asarray(out.logprobs).reshape(q, num_samples, -1),
      lengths=np.asarray(out.lengths).reshape(q, num_samples),
      truncated=np.asarray(out.finish_reason).reshape(q, num_samples) == int(sampling.FinishReason.LENGTH),
      scores=np.asarray(scores, np.float64).reshape(q, num_samples), timeouts=timeouts,
      sample_seconds=sample_seconds, reward_seconds=reward_seconds,
      generated_tokens=int(np.asarray(out.lengths).sum()))


def _informative(scores: np.ndarray, group_filter: GroupFilter) -> np.ndarray:
  """[Q] bool: the groups `group_filter` keeps (scores: [Q, n])."""
  if group_filter is GroupFilter.OFF:
    return np.ones(scores.shape[0], bool)
  return np.any(scores != scores[:, :1], axis=1)


def _dynamic_sample(first: list[Question], dynamic: DynamicSampling, seed: int, **kwargs
                    ) -> tuple[_Sampled, dict[str, float]]:
  """DAPO's loop: sample, drop uninformative groups, refill with new questions until full or capped."""
  target = len(first)
  kept, dropped, tried, questions = [], [], [], first
  while True:
    batch = _sample_and_score(questions=questions, seed=try_seed(seed, len(tried)), **kwargs)
    tried.append(batch)
    tries = len(tried)
    good = _informative(batch.scores, dynamic.group_filter)
    kept.append(batch.take(np.flatnonzero(good)))
    dropped.append(batch.take(np.flatnonzero(~good)))
    num_kept = sum(len(x.questions) for x in kept)
    if num_kept >= target or tries >= dynamic.max_tries:
      break
    questions = dynamic.next_questions()
  merged = _Sampled.concat(kept)
  if num_kept < target:
    # At the cap: the latest dropped groups fill the batch (zero advantage, no policy gradient).
    filler = _Sampled.concat(dropped[::-1])
    merged = _Sampled.concat([merged, filler.take(np.arange(target - num_kept))])
  merged = merged.take(np.arange(target))
  metrics = {"sampling/tries": float(tries), "sampling/kept_groups": float(min(num_kept, target)),
             "sampling/dropped_groups": float(sum(len(x.questions) for x in dropped))}
  # Costs count every try, dropped groups included.
  merged = dataclasses.replace(
      merged, timeouts=sum(x.timeouts for x in tried), sample_seconds=sum(x.sample_seconds for x in tried),
      reward_seconds=sum(x.reward_seconds for x in tried),
      generated_tokens=sum(x.generated_tokens for x in tried))
  return merged, metrics


def collect(*, params: Any, questions: Sequence[Question], source: RowSource,
            sampler: sampling.Sampler | None, strategy: sampling.Strategy | None,
            num_samples: int, max_new_tokens: int, seed: int, score_fn,
            gate: hybrid.GateTransform | None, gate_state: hybrid.GateState | None,
            dynamic: DynamicSampling | None = None) -> Experience:
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
    dynamic: DAPO's dynamic sampling (ROLLOUTS only); None keeps every group of `questions`.

  Returns:
    The `Experience`; `gate_state` is the updated state (unchanged for other sources).
  """
  q = len(questions)
  if source is RowSource.DEMOS:
    prompts = [np.asarray(x.prompt, np.int32) for x in questions]
    demos = [None if x.demo is None else np.asarray(x.demo, np.int32) for x in questions]
    decision = _fixed_decision(source, q, 1.0)
    rows = hybrid.route(decision, prompts=prompts, rollouts=[[] for _ in range(q)],
                        rollout_rewards=[np.zeros((0,)) for _ in range(q)], demos=demos)
    metrics = {"gate/sft_fraction": 1.0, "gate/off_example_ratio": 1.0,
               "gate/sft_rows": float(rows.num_rows), "gate/rl_rows": 0.0}
    return Experience(rows=rows, gate_state=gate_state, metrics=metrics, sampled_tokens=0)

  kwargs = dict(params=params, sampler=sampler, strategy=strategy, num_samples=num_samples,
                max_new_tokens=max_new_tokens, score_fn=score_fn)
  if dynamic is None or dynamic.group_filter is GroupFilter.OFF:
    sampled, extra = _sample_and_score(questions=questions, seed=seed, **kwargs), {}
  else:
    if source is not RowSource.ROLLOUTS:
      raise ValueError(f"dynamic sampling filters rollout groups of pure RL steps; source is {source.value}")
    sampled, extra = _dynamic_sample(list(questions), dynamic, seed, **kwargs)
  questions = sampled.questions
  prompts = [np.asarray(x.prompt, np.int32) for x in questions]
  demos = [None if x.demo is None else np.asarray(x.demo, np.int32) for x in questions]
  lengths, tokens, logp, scores = sampled.lengths, sampled.tokens, sampled.logp, sampled.scores
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
      rewards=scores, correct=correct, response_lengths=lengths, truncated=sampled.truncated,
      to_sft=decision.add_demo, num_rl_rows=rows.num_rows - num_demo, num_sft_rows=num_demo,
      timeouts=sampled.timeouts)
  metrics |= extra
  metrics["perf/sampling_seconds"] = sampled.sample_seconds
  metrics["perf/sampling_tokens_per_s"] = sampled.generated_tokens / max(sampled.sample_seconds, 1e-9)
  metrics["perf/reward_seconds"] = sampled.reward_seconds
  return Experience(rows=rows, gate_state=gate_state, metrics=metrics, sampled_tokens=sampled.generated_tokens)
