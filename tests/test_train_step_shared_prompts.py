"""The shared-prompt layout gives the plain layout's train step: same loss, gradients, metrics, updates.

The plain layout (every row `prompt ++ response`) is the reference: its step is itself checked against
written-out formulas in test_train_step.py. Here the same rows go through both layouts.
"""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from hpt_jax import hybrid, models, upge
from hpt_jax.hybrid.objective import LossConfig, LossMode
from hpt_jax.training import batching, mesh as mesh_lib, optimizer as optim_lib, state as state_lib
from hpt_jax.training import response_packing
from hpt_jax.training.old_logprobs import Recompute
from hpt_jax.training.train_step import TrainStep

T_CONST = 16
CFG = models.presets.tiny(num_layers=2, vocab_size=64, hidden_size=32, intermediate_size=64, num_heads=4,
                          num_kv_heads=2, head_dim=8)


def _rows(*, seed=3, q=5, n=3, old_logp=False):
  """A mixed HPT batch: one all-wrong question (→ its demonstration), RL groups of n rollouts."""
  rng = np.random.default_rng(seed)
  prompts = [rng.integers(1, 64, rng.integers(2, 6)) for _ in range(q)]
  rollouts = [[rng.integers(1, 64, rng.integers(1, 8)) for _ in range(n)] for _ in range(q)]
  rewards = [rng.integers(0, 2, n).astype(float) for _ in range(q)]
  rewards[0][:] = 0.0
  rewards[1][:] = [1.0] + [0.0] * (n - 1)
  demos = [rng.integers(1, 64, rng.integers(3, 8)) for _ in range(q)]
  decision = hybrid.decide(hybrid.HardGate(threshold=hybrid.Threshold.of_count(0)),
                           correct=np.array([int(r.sum()) for r in rewards]), num_rollouts=n)
  rows = hybrid.route(decision, prompts=prompts, rollouts=rollouts, rollout_rewards=rewards, demos=demos)
  if old_logp:  # π_old ≠ π_θ: ratios far enough from 1 to land in the clip regions
    rows = batching.Rows(**{f: getattr(rows, f) for f in ("prompts", "responses", "is_demo", "group_ids",
                                                          "question_index", "rewards", "rl_weight", "sft_weight")},
                         old_logp=[rng.normal(-4.2, 0.5, len(r)).astype(np.float32) for r in rows.responses])
  return rows


def _packs(rows, *, bm=8, multiple=1, prefix_multiple=1):
  plain = batching.PackConfig(length_buckets=(16,), rows_per_micro_batch=bm, micro_batch_multiple=multiple)
  shared = batching.PackConfig(length_buckets=(16,), rows_per_micro_batch=bm, micro_batch_multiple=multiple,
                               shared_prompts=batching.SharedPrompts(prompt_buckets=(6,), response_buckets=(8,),
                                                                     prefix_slot_multiple=prefix_multiple))
  return batching.pack(rows, config=plain), batching.pack(rows, config=shared)


def _assert_trees_close(a, b, *, rel):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    y = np.asarray(y)
    np.testing.assert_allclose(np.asarray(x), y, rtol=0, atol=rel * max(float(np.abs(y).max()), 1e-30),
                               err_msg=jax.tree_util.keystr(path))


def test_pack_stores_each_distinct_prompt_once_and_counts_the_same_tokens():
  rows = _rows(q=5, n=3)
  plain, shared = _packs(rows)
  assert shared.tokens.shape[:2] == plain.tokens.shape[:2]
  m = shared.tokens.shape[0]
  prefix_tokens, prefix_mask = batching.step_prefixes(shared)
  stored = [tuple(t[mask]) for t, mask in zip(prefix_tokens, prefix_mask) if mask.any()]
  assert sorted(stored) == sorted({tuple(p) for p in rows.prompts})  # each prompt of the batch once
  assert shared.prefix_tokens.shape[1] == -(-len(stored) // m)  # Gp = ceil(distinct / M)
  # Some prompt's rows sit in two micro-batches: the step must share prompts across micro-batches.
  micro_batches_of = {}
  for i, p in enumerate(rows.prompts):
    micro_batches_of.setdefault(tuple(p), set()).add(i // 8)
  assert max(map(len, micro_batches_of.values())) > 1
  for i in range(rows.num_rows):  # each row's prefix slot holds its prompt, its slots its response
    mi, r = divmod(i, 8)
    slot = shared.prefix_index[mi, r]
    np.testing.assert_array_equal(prefix_tokens[slot][prefix_mask[slot]], rows.prompts[i])
    np.testing.assert_array_equal(shared.tokens[mi, r][shared.attention_mask[mi, r]], rows.responses[i])
  assert batching.token_count(shared) == batching.token_count(plain) == int(rows.lengths().sum())
  assert int(shared.response_mask.sum()) == int(plain.response_mask.sum())


# The layouts differ only up to the per-token log-probs; official mode (per-micro-batch and per-rank
# normalisers, SFT, entropy, chunked log-probs) and a clipped GRPO with given π_old (the old log-probs'
# alignment, batch-wide denominators) cover what reads them. PAPER mode reads the same arrays.
@pytest.mark.parametrize("loss", [
    LossConfig(algorithm=upge.HptRl(width=T_CONST), entropy_coeff=0.001, logprob_chunk=8, official_ranks=2),
    LossConfig(algorithm=upge.Grpo(), mode=LossMode.GLOBAL, sft=False, logprob_chunk=None),
], ids=["official", "grpo-clip-old-logp"])
def test_shared_layout_step_equals_plain_layout(loss):
  rows = _rows(old_logp=isinstance(loss.algorithm, upge.Grpo))
  plain, shared = _packs(rows, bm=4, multiple=4)
  assert plain.tokens.shape[0] == 4
  params = state_lib.create_train_state(CFG, optim_lib.make_optimizer(optim_lib.OptimConfig()), seed=0).params
  step = TrainStep(CFG, loss=loss, optimizer=optim_lib.make_optimizer(optim_lib.OptimConfig()))
  loss_p, grads_p, metrics_p = step.loss_and_grads(params, plain)
  loss_s, grads_s, metrics_s = step.loss_and_grads(params, shared)
  np.testing.assert_allclose(float(loss_s), float(loss_p), rtol=1e-5)
  _assert_trees_close(grads_s, grads_p, rel=1e-5)
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads_p)) > 1e-3
  for key, value in metrics_p.items():
    np.testing.assert_allclose(float(metrics_s[key]), float(value), rtol=1e-5, atol=1e-7, err_msg=key)
  if isinstance(loss.algorithm, upge.Grpo):  # the old log-probs really put tokens in the clip regions
    assert 0 < float(metrics_p["algo/clipped_frac"]) < 1


def test_shared_layout_sharded_step_equals_single_device():
  """data=2 × fsdp=2 × tensor=2: one update from the shared layout equals the single-device one."""
  rows = _rows(q=6, n=4)
  _, shared = _packs(rows, bm=8, prefix_multiple=4)
  optimizer = optim_lib.make_optimizer(optim_lib.OptimConfig(learning_rate=1e-3))
  loss = LossConfig(algorithm=upge.HptRl(width=T_CONST), logprob_chunk=8)
  mesh = mesh_lib.MeshConfig(data=2, fsdp=2, tensor=2).build()
  out = {}
  for name, m, batch in (("one", None, shared), ("mesh", mesh, shared)):
    state = state_lib.create_train_state(CFG, optimizer, seed=0, mesh=m)
    new_state, metrics = TrainStep(CFG, loss=loss, optimizer=optimizer, mesh=m)(state, batch)
    out[name] = jax.device_get((new_state.params, metrics))
  for other in ("mesh",):
    for key in ("loss/total", "optim/grad_norm", "batch/response_tokens"):
      np.testing.assert_allclose(out[other][1][key], out["one"][1][key], rtol=1e-5, err_msg=f"{other} {key}")
    for x, y in zip(jax.tree.leaves(out[other][0]), jax.tree.leaves(out["one"][0])):
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=1e-5)


def test_packed_responses_step_equals_unpacked():
  """response_granules: each micro-batch's per-token work on its real response tokens only, in the
  smallest of g capacities that holds them; same loss, gradients and metrics as every slot. Official
  mode reads every per-token output (per-rank normalisers, SFT, entropy, chunked log-probs); the
  packing changes only the hidden states, which the other objectives read the same way."""
  loss = LossConfig(algorithm=upge.HptRl(width=T_CONST), entropy_coeff=0.001, logprob_chunk=8, official_ranks=2)
  rows = _rows(seed=5, q=6, n=3)
  _, shared = _packs(rows, bm=4, multiple=4)
  granules = 2  # 2 branches: compile time is the test's cost
  m, bm, r = shared.tokens.shape
  capacities = response_packing.capacities(bm * r, granules)
  assert capacities == (16, 32)
  real = np.asarray(shared.attention_mask).reshape(m, -1).sum(-1)
  chosen = [capacities[response_packing.branch(capacities, n)] for n in real]
  assert all(c >= n for c, n in zip(chosen, real)) and len(set(chosen)) > 1 and min(chosen) < bm * r
  params = state_lib.create_train_state(CFG, optim_lib.make_optimizer(optim_lib.OptimConfig()), seed=0).params
  step = lambda g: TrainStep(CFG, loss=loss, optimizer=optim_lib.make_optimizer(optim_lib.OptimConfig()),
                             response_granules=g)
  loss_u, grads_u, metrics_u = step(0).loss_and_grads(params, shared)
  loss_p, grads_p, metrics_p = step(granules).loss_and_grads(params, shared)
  np.testing.assert_allclose(float(loss_p), float(loss_u), rtol=1e-5)
  _assert_trees_close(grads_p, grads_u, rel=1e-5)
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads_u)) > 1e-3
  for key, value in metrics_u.items():
    np.testing.assert_allclose(float(metrics_p[key]), float(value), rtol=1e-5, atol=1e-7, err_msg=key)


def test_packed_responses_refuse_a_split_batch():
  mesh = mesh_lib.MeshConfig(data=2, fsdp=1, tensor=4).build()
  with pytest.raises(ValueError, match="TrainStep: response_granules=2 needs an unsplit batch"):
    TrainStep(CFG, loss=LossConfig(algorithm=upge.Grpo(), mode=LossMode.GLOBAL, sft=False),
              optimizer=optim_lib.make_optimizer(optim_lib.OptimConfig()), mesh=mesh, response_granules=2)
  with pytest.raises(ValueError, match="Recompute: response_granules=2 needs an unsplit batch"):
    Recompute(CFG, temperature=1.0, logprob_chunk=None, mesh=mesh, response_granules=2)
  with pytest.raises(ValueError, match="response_granules must be >= 0"):
    Recompute(CFG, temperature=1.0, logprob_chunk=None, response_granules=-1)


def test_packed_recompute_equals_unpacked():
  """The π_old recompute pass with response_granules gives the unpacked pass's log-probs."""
  rows = _rows(seed=5, q=6, n=3)
  _, shared = _packs(rows, bm=4, multiple=4)
  m, bm, r = shared.tokens.shape
  capacities = response_packing.capacities(bm * r, 2)
  real = np.asarray(shared.attention_mask).reshape(m, -1).sum(-1)
  assert len({capacities[response_packing.branch(capacities, n)] for n in real}) == 2  # both branches run
  params = state_lib.create_train_state(CFG, optim_lib.make_optimizer(optim_lib.OptimConfig()), seed=0).params
  batch = jax.tree.map(jnp.asarray, shared)
  out = {g: jax.device_get(Recompute(CFG, temperature=0.7, logprob_chunk=None, response_granules=g)(params, batch))
         for g in (0, 2)}
  rollout = np.asarray(shared.response_mask) & ~np.asarray(shared.is_demo)[..., None]
  assert rollout.sum() > 20 and np.abs(out[0].old_logp[rollout]).min() > 0
  np.testing.assert_allclose(out[2].old_logp[rollout], out[0].old_logp[rollout], atol=1e-6, rtol=0)
