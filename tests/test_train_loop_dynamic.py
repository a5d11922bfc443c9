"""DAPO's dynamic sampling: groups whose rewards are all equal are dropped and fresh questions are
sampled until the step is full, at most `max_tries` batches; hand-derived with a fake sampler."""

import numpy as np
import pytest

from hpt_jax.training import config as c
from hpt_jax.training.config import GroupFilter, RowSource
from hpt_jax.training.overrides import ConfigError
from hpt_jax.training.rollout_phase import DynamicSampling, Question, collect, try_seed

import test_train_loop_fixtures as fx
from test_train_loop_rows import N, T, _FakeSampler, _score


def _question(index, truth):
  return Question(index=index, prompt=np.array([1, 2 + index], np.int32), demo=None, ground_truth=truth)


class _Refills:
  """Questions 3, 4, 5, then 6, 7, 8, ...; truths cycle q0, q1, q2 (q1 is never solved: dropped)."""

  def __init__(self):
    self.calls, self.seeds = 0, []

  def __call__(self):
    self.calls += 1
    first = 3 * self.calls
    return [_question(i, f"q{i % 3}") for i in range(first, first + 3)]


class _SeedRecorder(_FakeSampler):
  def __init__(self):
    self.seeds = []

  def generate(self, params, prompts, *, seed, **kwargs):
    self.seeds.append(seed)
    return super().generate(params, prompts, seed=seed, **kwargs)


def _run(max_tries):
  refills, sampler = _Refills(), _SeedRecorder()
  first = [_question(i, f"q{i}") for i in range(3)]
  exp = collect(params=None, questions=first, source=RowSource.ROLLOUTS, sampler=sampler, strategy=None,
                num_samples=N, max_new_tokens=T, seed=11, score_fn=_score, gate=None, gate_state=None,
                dynamic=DynamicSampling(group_filter=GroupFilter.EQUAL_REWARDS, max_tries=max_tries,
                                        next_questions=refills))
  return exp, refills, sampler


def test_equal_reward_groups_are_replaced_by_fresh_questions():
  # Rollout 0 of a question whose truth is q0/q2 is correct: rewards (1, 0) are informative; q1's
  # (0, 0) are not. Batch 1 keeps questions 0, 2 and drops 1; batch 2 (3, 4, 5) keeps 3 (and 5,
  # beyond the 3 groups needed) and drops 4.
  exp, refills, sampler = _run(max_tries=5)
  rows = exp.rows
  assert refills.calls == 1 and sampler.seeds == [11, try_seed(11, 1)]
  assert rows.num_rows == 3 * N and not rows.is_demo.any()
  assert rows.rewards.tolist() == [1.0, 0.0] * 3
  # The kept groups are, in order, questions 0, 2, 3 (prompts [1, 2 + index]).
  assert [int(p[1]) - 2 for p in rows.prompts[::N]] == [0, 2, 3]
  assert rows.group_ids.tolist() == [0, 0, 1, 1, 2, 2]
  m = exp.metrics
  assert (m["sampling/tries"], m["sampling/kept_groups"], m["sampling/dropped_groups"]) == (2.0, 3.0, 2.0)
  assert m["reward/accuracy"] == pytest.approx(0.5)
  # Sampling cost counts both batches: 6 questions x (1 + 2) tokens.
  assert exp.sampled_tokens == 6 * (1 + 2)


def test_the_cap_fills_the_batch_with_dropped_groups():
  exp, refills, _ = _run(max_tries=1)
  assert refills.calls == 0
  # Questions 0 and 2 kept, question 1 (rewards 0, 0) fills the third slot.
  assert [int(p[1]) - 2 for p in exp.rows.prompts[::N]] == [0, 2, 1]
  assert exp.rows.rewards.tolist() == [1.0, 0.0, 1.0, 0.0, 0.0, 0.0]
  assert (exp.metrics["sampling/tries"], exp.metrics["sampling/kept_groups"]) == (1.0, 2.0)


def test_try_seeds_keep_the_first_and_differ_after():
  seeds = [try_seed(5, t) for t in range(50)]
  assert seeds[0] == 5 and len(set(seeds)) == 50 and seeds == [try_seed(5, t) for t in range(50)]


def test_dapo_turns_dynamic_sampling_on_and_other_rows_refuse_it(tmp_path):
  tiny = fx.tiny_config(tmp_path)
  dapo = c.build_config(tiny, algorithm="dapo")
  assert dapo.sampling.group_filter is GroupFilter.EQUAL_REWARDS
  c.validate(dapo, num_devices=8)
  assert c.build_config(tiny, algorithm="grpo").sampling.group_filter is GroupFilter.OFF
  with pytest.raises(ConfigError, match=r"sampling\.group_filter.*phases\.0\.rows is gate"):
    c.validate(c.build_config(tiny, overrides=("sampling.group_filter=equal_rewards",)), num_devices=8)
  with pytest.raises(ConfigError, match=r"sampling\.max_sampling_tries"):
    c.validate(c.build_config(dapo, overrides=("sampling.max_sampling_tries=0",)), num_devices=8)
