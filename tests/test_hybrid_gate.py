"""Gate, gate state, routing and packing: hand-derived expectations on small batches."""

import numpy as np
import pytest

from hpt_jax import hybrid
from hpt_jax.hybrid import DemoLoss, HardGate, SoftGate, Threshold
from hpt_jax.training import batching


def test_hard_gate_fraction_and_count_agree_with_the_code_comparison():
  correct = np.array([0, 1, 2, 3, 8])
  # γ = 2/8 as a fraction: P ≤ 0.25 ⟺ correct ≤ 2 for n = 8 (exactly-at-γ goes to SFT).
  by_fraction = hybrid.decide(HardGate(threshold=Threshold.of_fraction(2 / 8)), correct=correct, num_rollouts=8)
  by_count = hybrid.decide(HardGate(threshold=Threshold.of_count(2)), correct=correct, num_rollouts=8)
  expected_beta = np.array([1.0, 1.0, 1.0, 0.0, 0.0])
  for d in (by_fraction, by_count):
    np.testing.assert_array_equal(d.beta, expected_beta)
    np.testing.assert_array_equal(d.alpha, 1.0 - expected_beta)
    np.testing.assert_array_equal(d.keep_rollouts, expected_beta == 0)
    np.testing.assert_array_equal(d.demo_sft_weight, expected_beta)
    np.testing.assert_array_equal(d.demo_off_policy_weight, np.zeros(5))
  np.testing.assert_allclose(by_count.success_rate, correct / 8)


def test_gamma_zero_sends_only_all_wrong_groups_to_sft():
  # All wrong, mixed, all correct: only the all-wrong group gets β = 1 with γ = 0 (Qwen).
  d = hybrid.decide(HardGate(threshold=Threshold.of_fraction(0.0)), correct=np.array([0, 4, 8]), num_rollouts=8)
  np.testing.assert_array_equal(d.beta, [1.0, 0.0, 0.0])
  np.testing.assert_array_equal(d.alpha, [0.0, 1.0, 1.0])
  # Per-question n: 1 of 3 correct is P = 1/3 ≤ 1/3, while 1 of 2 is P = 1/2 > 1/3.
  d = hybrid.decide(HardGate(threshold=Threshold.of_fraction(1 / 3)), correct=np.array([1, 1]),
                    num_rollouts=np.array([3, 2]))
  np.testing.assert_array_equal(d.beta, [1.0, 0.0])


def test_ablation_demo_losses_route_weights():
  correct = np.array([0, 5])
  off_on = hybrid.decide(HardGate(threshold=Threshold.of_count(0), demo=DemoLoss.off_policy_only()),
                         correct=correct, num_rollouts=8)
  np.testing.assert_array_equal(off_on.demo_sft_weight, [0.0, 0.0])
  np.testing.assert_array_equal(off_on.demo_off_policy_weight, [1.0, 0.0])
  mix_on = hybrid.decide(HardGate(threshold=Threshold.of_count(0), demo=DemoLoss.mix()),
                         correct=correct, num_rollouts=8)
  np.testing.assert_allclose(mix_on.demo_sft_weight, [0.1, 0.0])
  np.testing.assert_allclose(mix_on.demo_off_policy_weight, [1.0, 0.0])
  np.testing.assert_array_equal(mix_on.keep_rollouts, [False, True])


def test_soft_gate_uses_user_functions_and_rejects_bad_values():
  gate = SoftGate(alpha_fn=lambda p: p, beta_fn=lambda p: (1.0 - p) ** 2, demo=DemoLoss.sft_only())
  d = hybrid.decide(gate, correct=np.array([0, 2, 4]), num_rollouts=4)
  np.testing.assert_allclose(d.alpha, [0.0, 0.5, 1.0])
  np.testing.assert_allclose(d.beta, [1.0, 0.25, 0.0])
  np.testing.assert_array_equal(d.keep_rollouts, [False, True, True])
  np.testing.assert_array_equal(d.add_demo, [True, True, False])
  with pytest.raises(ValueError, match="beta_fn"):
    hybrid.decide(SoftGate(alpha_fn=lambda p: p, beta_fn=lambda p: p - 1.0), correct=np.array([0]),
                  num_rollouts=4)


def test_bad_gate_inputs_name_the_field():
  with pytest.raises(ValueError, match="exactly one"):
    Threshold(fraction=0.1, count=1)
  with pytest.raises(ValueError, match="fraction"):
    Threshold.of_fraction(1.5)
  with pytest.raises(ValueError, match="correct must lie"):
    hybrid.decide(HardGate(threshold=Threshold.of_count(0)), correct=np.array([9]), num_rollouts=8)
  with pytest.raises(ValueError, match="DemoLoss"):
    DemoLoss(sft=0.0, off_policy=0.0)


def test_gate_state_counts_history_and_drops_demo_questions():
  transform = hybrid.make_gate(HardGate(threshold=Threshold.of_count(0)), num_questions=5,
                               drop_demo_questions=True)
  s0 = transform.init()
  d1, s1 = transform.update(s0, question_ids=np.array([0, 3, 3]), correct=np.array([0, 2, 0]), num_rollouts=4)
  np.testing.assert_array_equal(d1.add_demo, [True, False, True])
  # The input state is untouched (pure update).
  np.testing.assert_array_equal(s0.times_seen, np.zeros(5))
  np.testing.assert_array_equal(s1.times_seen, [1, 0, 0, 2, 0])
  np.testing.assert_array_equal(s1.times_demo, [1, 0, 0, 1, 0])
  np.testing.assert_allclose(s1.solve_sum, [0.0, 0, 0, 0.5, 0])
  assert int(s1.step) == 1 and int(s1.num_rl) == 1 and int(s1.num_demo) == 2
  np.testing.assert_array_equal(s1.last_step, [0, -1, -1, 0, -1])
  np.testing.assert_array_equal(transform.keep(s1, np.array([0, 1, 3, 4])), [False, True, False, True])
  keep_all = hybrid.make_gate(HardGate(threshold=Threshold.of_count(0)), num_questions=5)
  np.testing.assert_array_equal(keep_all.keep(s1, np.array([0, 3])), [True, True])
  metrics = hybrid.gate_metrics(s1, d1, num_rollouts=4)
  assert metrics["gate/off_example_ratio"] == pytest.approx(2 / (2 + 4))
  with pytest.raises(ValueError, match="question_ids out of range"):
    transform.update(s1, question_ids=np.array([5]), correct=np.array([0]), num_rollouts=4)


def _toy_questions():
  prompts = [np.array([1, 2]), np.array([3]), np.array([4, 5, 6])]
  rollouts = [[np.array([7, 8]), np.array([9])], [np.array([10]), np.array([11, 12, 13])],
              [np.array([14]), np.array([15])]]
  rewards = [np.array([0.0, 0.0]), np.array([1.0, 0.0]), np.array([1.0, 1.0])]
  demos = [np.array([20, 21, 22]), np.array([23]), None]
  return prompts, rollouts, rewards, demos


def test_route_hpt_drops_rollouts_and_adds_one_demo():
  prompts, rollouts, rewards, demos = _toy_questions()
  d = hybrid.decide(HardGate(threshold=Threshold.of_count(0)), correct=np.array([0, 1, 2]), num_rollouts=2)
  rows = hybrid.route(d, prompts=prompts, rollouts=rollouts, rollout_rewards=rewards, demos=demos)
  # q0 → demo only (own group 3+0); q1, q2 → their two rollouts each in groups 1, 2.
  np.testing.assert_array_equal(rows.is_demo, [True, False, False, False, False])
  np.testing.assert_array_equal(rows.group_ids, [3, 1, 1, 2, 2])
  np.testing.assert_array_equal(rows.sft_weight, [1, 0, 0, 0, 0])
  np.testing.assert_array_equal(rows.rl_weight, [0, 1, 1, 1, 1])
  np.testing.assert_array_equal(rows.responses[0], demos[0])
  np.testing.assert_array_equal(rows.rewards, [1.0, 1.0, 0.0, 1.0, 1.0])
  # LUFFY-style union group: the demo shares its question's group.
  soft = SoftGate(alpha_fn=lambda p: np.ones_like(p), beta_fn=lambda p: (p < 1).astype(float),
                  demo=DemoLoss.off_policy_only())
  d2 = hybrid.decide(soft, correct=np.array([0, 1, 2]), num_rollouts=2)
  rows2 = hybrid.route(d2, prompts=prompts, rollouts=rollouts, rollout_rewards=rewards, demos=demos,
                       demo_joins_group=True)
  np.testing.assert_array_equal(rows2.group_ids, [0, 0, 0, 1, 1, 1, 2, 2])
  np.testing.assert_array_equal(rows2.is_demo, [False, False, True, False, False, True, False, False])
  np.testing.assert_array_equal(rows2.rl_weight, np.ones(8))
  with pytest.raises(ValueError, match=r"demos\[2\]"):
    hybrid.route(hybrid.decide(HardGate(threshold=Threshold.of_count(2)), correct=np.array([0, 0, 0]),
                               num_rollouts=2),
                 prompts=prompts, rollouts=rollouts, rollout_rewards=rewards, demos=demos)


def test_pack_layout_masks_and_padding_rows():
  prompts, rollouts, rewards, demos = _toy_questions()
  d = hybrid.decide(HardGate(threshold=Threshold.of_count(0)), correct=np.array([0, 1, 2]), num_rollouts=2)
  rows = hybrid.route(d, prompts=prompts, rollouts=rollouts, rollout_rewards=rewards, demos=demos)
  cfg = batching.PackConfig(length_buckets=(4, 6, 16), rows_per_micro_batch=2, micro_batch_multiple=4)
  adv = np.arange(5, dtype=np.float64)
  mb = batching.pack(rows, advantages=adv, config=cfg)
  # Longest row: prompt 2 + demo 3 = 5 → bucket 6; 5 rows / 2 → 3 micro-batches, rounded up to 4.
  assert mb.tokens.shape == (4, 2, 6)
  flat_tokens = mb.tokens.reshape(8, 6)
  np.testing.assert_array_equal(flat_tokens[0], [1, 2, 20, 21, 22, 0])
  np.testing.assert_array_equal(mb.targets.reshape(8, 6)[0], [2, 20, 21, 22, 0, 0])
  np.testing.assert_array_equal(mb.response_mask.reshape(8, 6)[0], [False, True, True, True, False, False])
  np.testing.assert_array_equal(mb.positions.reshape(8, 6)[0], [0, 1, 2, 3, 4, 0])
  np.testing.assert_array_equal(mb.attention_mask.reshape(8, 6)[2], [True, True, True, True, False, False])
  np.testing.assert_array_equal(mb.response_mask.reshape(8, 6)[2], [True, True, True, False, False, False])
  np.testing.assert_array_equal(mb.row_valid.reshape(8), [1, 1, 1, 1, 1, 0, 0, 0])
  assert not mb.response_mask.reshape(8, 6)[5:].any() and not mb.attention_mask.reshape(8, 6)[5:].any()
  np.testing.assert_array_equal(mb.group_ids.reshape(8), [2, 0, 0, 1, 1, -1, -1, -1])
  np.testing.assert_array_equal(mb.group_size.reshape(8), [1, 2, 2, 2, 2, 1, 1, 1])
  np.testing.assert_array_equal(mb.advantages.reshape(8)[:5], adv)
  assert float(mb.num_questions) == 3.0 and not bool(mb.has_old_logp)
  with pytest.raises(ValueError, match="exceeds the largest length bucket"):
    batching.pack(rows, advantages=adv, config=batching.PackConfig(length_buckets=(4,), rows_per_micro_batch=2))
  with pytest.raises(ValueError, match="advantages"):
    batching.pack(rows, advantages=adv[:3], config=cfg)


def test_train_state_with_gate_state_round_trips_through_orbax(tmp_path):
  """The whole TrainState (params, skip-wrapped AdamW state, gate state, step, key) is one orbax pytree."""
  import jax
  import jax.numpy as jnp
  import orbax.checkpoint as ocp

  from hpt_jax.training import optimizer as optim_lib
  from hpt_jax.training.state import TrainState

  transform = hybrid.make_gate(HardGate(threshold=Threshold.of_count(0)), num_questions=4)
  _, gate_state = transform.update(transform.init(), question_ids=np.array([1, 2]), correct=np.array([0, 3]),
                                   num_rollouts=4)
  params = {"w": jnp.arange(6.0).reshape(2, 3), "b": {"c": jnp.ones((3,))}}
  opt = optim_lib.make_optimizer(optim_lib.OptimConfig())
  opt_state = opt.update(jax.tree.map(jnp.ones_like, params), opt.init(params), params)[1]
  state = TrainState(step=jnp.asarray(3, jnp.int32), params=params, opt_state=opt_state, gate_state=gate_state,
                     rng=jax.random.key_data(jax.random.key(7)))
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(tmp_path / "state", state)
    ckpt.wait_until_finished()
    restored = ckpt.restore(tmp_path / "state", state)
  assert type(restored.gate_state) is hybrid.GateState
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(state), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(np.asarray(b), np.asarray(a), err_msg=jax.tree_util.keystr(path))
