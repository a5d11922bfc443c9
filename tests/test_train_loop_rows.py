"""The host side of a step without a model: row routing per source, step-wide advantages, mini-batch
slicing, step seeds. A fake sampler returns fixed rollouts so every row can be derived by hand."""

import dataclasses

import numpy as np
import pytest

from hpt_jax import hybrid
from hpt_jax import sampling
from hpt_jax.hybrid.objective import AdvantageEstimator
from hpt_jax.sampling import SampleOutput
from hpt_jax.training import loop
from hpt_jax.training.config import RowSource
from hpt_jax.training.rollout_phase import Question, collect

N = 2  # rollouts per question
T = 3  # response columns


class _FakeSampler:
  """Question q's rollout s answers "q+s" in text and has length 1 + s (EOS at the end for s = 0)."""

  def generate(self, params, prompts, *, strategy, max_new_tokens, num_samples, seed, prompt_ids):
    del params, strategy, max_new_tokens, seed
    rows = len(prompts) * num_samples
    lengths = np.array([1 + s for _ in prompts for s in range(num_samples)], np.int32)
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.int32)
    tokens = np.where(mask, 7, 0).astype(np.int32)
    logp = np.where(mask, -0.5, 0.0).astype(np.float32)
    finish = np.array([int(sampling.FinishReason.EOS if s == 0 else sampling.FinishReason.LENGTH)
                       for _ in prompts for s in range(num_samples)], np.int32)
    out = SampleOutput(prompt_tokens=np.zeros((rows, 2), np.int32), prompt_mask=np.ones((rows, 2), bool),
                       tokens=tokens, mask=mask, logprobs=logp, sampling_logprobs=logp,
                       finish_reason=finish, lengths=lengths,
                       prompt_ids=np.repeat(np.asarray(prompt_ids), num_samples),
                       sample_ids=np.tile(np.arange(num_samples), len(prompts)), num_steps=np.int32(T))
    texts = [f"{q}+{s}" for q in prompt_ids for s in range(num_samples)]
    return sampling.Rollouts(output=out, texts=texts)


def _score(responses, truths):
  # Correct when the response names the truth's question and sample 0 ("q+0"), for questions 0 and 2.
  return np.array([1.0 if r.endswith("+0") and t in ("q0", "q2") else 0.0 for r, t in zip(responses, truths)]), 1


def _questions():
  return [Question(index=i, prompt=np.array([1, 2 + i], np.int32), demo=np.array([9, 9, 5], np.int32),
                   ground_truth=f"q{i}") for i in range(3)]


def _collect(source, gate=None, state=None):
  return collect(params=None, questions=_questions(), source=source, sampler=_FakeSampler(), strategy=None,
                 num_samples=N, max_new_tokens=T, seed=0, score_fn=_score, gate=gate, gate_state=state)


def test_gate_routes_unsolved_questions_to_their_demonstration():
  gate = hybrid.make_gate(hybrid.HardGate(threshold=hybrid.Threshold.of_count(0)), num_questions=3)
  exp = _collect(RowSource.GATE, gate, gate.init())
  rows = exp.rows
  # q0: 1/2 correct -> 2 RL rows; q1: 0/2 -> 1 demo row; q2: 1/2 -> 2 RL rows.
  assert rows.is_demo.tolist() == [False, False, True, False, False]
  assert rows.question_index.tolist() == [0, 0, 1, 2, 2]
  assert rows.rewards.tolist() == [1.0, 0.0, 1.0, 1.0, 0.0]
  assert [len(r) for r in rows.responses] == [1, 2, 3, 1, 2]
  np.testing.assert_array_equal(rows.responses[2], [9, 9, 5])
  np.testing.assert_array_equal(rows.old_logp[1], [-0.5, -0.5])
  assert exp.gate_state.times_demo.tolist() == [0, 1, 0]
  m = exp.metrics
  assert m["reward/accuracy"] == pytest.approx(2 / 6) and m["gate/sft_fraction"] == pytest.approx(1 / 3)
  assert m["gate/off_example_ratio"] == pytest.approx(1 / 5)
  assert m["response/truncation_rate"] == pytest.approx(0.5) and m["reward/timeouts"] == 1
  assert exp.sampled_tokens == 3 * (1 + 2)


def test_fixed_sources_build_the_baselines_rows():
  rl = _collect(RowSource.ROLLOUTS).rows
  assert rl.num_rows == 6 and not rl.is_demo.any() and rl.sft_weight.sum() == 0
  both = _collect(RowSource.ROLLOUTS_AND_DEMOS).rows
  # LUFFY/SRFT: each question's demonstration joins its rollouts' group, as an off-policy RL row.
  assert both.is_demo.tolist() == [False, False, True] * 3
  assert both.group_ids.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
  assert both.rl_weight.tolist() == [1.0] * 9 and both.sft_weight.tolist() == [0.0] * 9
  demos = collect(params=None, questions=_questions(), source=RowSource.DEMOS, sampler=None, strategy=None,
                  num_samples=N, max_new_tokens=T, seed=0, score_fn=None, gate=None, gate_state=None)
  assert demos.rows.is_demo.all() and demos.rows.sft_weight.tolist() == [1.0] * 3
  assert demos.rows.rl_weight.tolist() == [0.0] * 3 and demos.sampled_tokens == 0


def test_step_advantages_are_computed_over_all_rows_by_group():
  gate = hybrid.make_gate(hybrid.HardGate(threshold=hybrid.Threshold.of_count(0)), num_questions=3)
  rows = _collect(RowSource.GATE, gate, gate.init()).rows
  # Dr.GRPO: R - mean of the group; groups {0,1}: rewards (1, 0) -> (0.5, -0.5); the demo row is a
  # singleton group, where verl takes mean 0, so its Â is its reward 1 (unused by HPT's SFT term).
  dr = loop.step_advantages(AdvantageEstimator.DR_GRPO, rows)
  np.testing.assert_allclose(dr, [0.5, -0.5, 1.0, 0.5, -0.5])
  # GRPO divides by the unbiased std of (1, 0) = 1/sqrt(2) (+1e-6).
  grpo = loop.step_advantages(AdvantageEstimator.GRPO, rows)
  np.testing.assert_allclose(grpo[[0, 1]], np.array([0.5, -0.5]) / (np.sqrt(0.5) + 1e-6), rtol=1e-5)


def test_minibatch_slices_keep_old_logp_only_after_the_first_update():
  gate = hybrid.make_gate(hybrid.HardGate(threshold=hybrid.Threshold.of_count(0)), num_questions=3)
  rows = _collect(RowSource.GATE, gate, gate.init()).rows
  first = loop.take_rows(rows, 0, 3, keep_old_logp=False)
  later = loop.take_rows(rows, 3, 5, keep_old_logp=True)
  assert first.old_logp is None and first.num_rows == 3
  assert later.num_rows == 2 and later.question_index.tolist() == [2, 2]
  np.testing.assert_array_equal(later.old_logp[1], rows.old_logp[4])


def test_step_seeds_differ_by_step_and_are_reproducible():
  seeds = [loop.step_seed(0, s) for s in range(100)]
  assert len(set(seeds)) == 100 and seeds == [loop.step_seed(0, s) for s in range(100)]
  assert loop.step_seed(1, 0) != loop.step_seed(0, 0) and all(0 <= s < 2**31 for s in seeds)
