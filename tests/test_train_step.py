"""The train step against independent references: Dr.GRPO, token-mean NLL, the two HPT modes,
accumulation, 8-device sharding, update skipping.

References compute full [B, L, V] logits with the model's own `logits` (no chunking, no upge) and
write each loss formula out in jnp; advantages come from NumPy group means.
"""

import numpy as np
import optax
import pytest

import jax
import jax.numpy as jnp
from flax import nnx

from hpt_jax import hybrid, models, upge
from hpt_jax.hybrid.objective import LossConfig, LossMode
from hpt_jax.training import batching, mesh as mesh_lib, optimizer as optim_lib, state as state_lib
from hpt_jax.training.train_step import TrainStep

T_CONST = 16  # the constant RL normaliser T of these tests
PACK = batching.PackConfig(length_buckets=(16,), rows_per_micro_batch=8)
CFG = models.presets.tiny(num_layers=2, vocab_size=64, hidden_size=32, intermediate_size=64, num_heads=4,
                          num_kv_heads=2, head_dim=8)


@pytest.fixture(scope="module")
def params():
  opt = optax.identity()
  return state_lib.create_train_state(CFG, opt, seed=0).params


def _questions(seed, *, q=4, n=4, all_wrong=(), all_right=()):
  rng = np.random.default_rng(seed)
  prompts = [rng.integers(1, 64, rng.integers(2, 5)) for _ in range(q)]
  rollouts = [[rng.integers(1, 64, rng.integers(1, 7)) for _ in range(n)] for _ in range(q)]
  rewards = [rng.integers(0, 2, n).astype(float) for _ in range(q)]
  for i in all_wrong:
    rewards[i][:] = 0.0
  for i in all_right:
    rewards[i][:] = 1.0
  demos = [rng.integers(1, 64, rng.integers(3, 8)) for _ in range(q)]
  return prompts, rollouts, rewards, demos


def _rows(gate, seed, **kw):
  prompts, rollouts, rewards, demos = _questions(seed, **kw)
  correct = np.array([int(r.sum()) for r in rewards])
  decision = hybrid.decide(gate, correct=correct, num_rollouts=len(rewards[0]))
  return hybrid.route(decision, prompts=prompts, rollouts=rollouts, rollout_rewards=rewards, demos=demos)


def _ref_logp_entropy(params, batch):
  """Full-logits log π(target) and entropy, [N, L] over all micro-batch rows."""
  model = nnx.merge(state_lib.model_graphdef(CFG), nnx.State(params))
  tok = batch.tokens.reshape(-1, batch.tokens.shape[-1])
  hidden, _ = model(jnp.asarray(tok), positions=jnp.asarray(batch.positions.reshape(tok.shape)),
                    attention_mask=jnp.asarray(batch.attention_mask.reshape(tok.shape)))
  logits = model.logits(hidden)
  logp_all = jax.nn.log_softmax(logits, axis=-1)
  targets = jnp.asarray(batch.targets.reshape(tok.shape))
  logp = jnp.take_along_axis(logp_all, targets[..., None], axis=-1)[..., 0]
  entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
  return logp, entropy


def _dr_grpo_advantages(rows):
  adv = np.zeros(rows.num_rows)
  for g in np.unique(rows.group_ids):
    idx = rows.group_ids == g
    mean = rows.rewards[idx].mean() if idx.sum() > 1 else 0.0  # verl: singleton mean 0
    adv[idx] = rows.rewards[idx] - mean
  return adv


def _flat(batch, field):
  x = np.asarray(getattr(batch, field))
  return x.reshape(-1, *x.shape[2:])


def _assert_tree_close(a, b, *, rtol, atol):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol,
                               err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def official_no_entropy():
  loss = LossConfig(algorithm=upge.HptRl(width=T_CONST), entropy_coeff=0.0, logprob_chunk=24)
  return TrainStep(CFG, loss=loss, optimizer=optim_lib.make_optimizer(optim_lib.OptimConfig()))


def test_all_rl_batch_gradient_is_dr_grpo(params, official_no_entropy):
  rows = _rows(hybrid.HardGate(threshold=hybrid.Threshold.of_count(0)), seed=1, q=2, n=4, all_right=(1,))
  assert not rows.is_demo.any()
  batch = batching.pack(rows, config=PACK)
  loss, grads, metrics = official_no_entropy.loss_and_grads(params, batch)

  adv = np.zeros(_flat(batch, "rewards").shape)
  adv[:rows.num_rows] = _dr_grpo_advantages(rows)
  mask = _flat(batch, "response_mask")

  def reference(p):
    logp, _ = _ref_logp_entropy(p, batch)
    ratio = jnp.exp(logp - jax.lax.stop_gradient(logp))  # on-policy: value 1, gradient ∇log π
    return jnp.sum(jnp.where(mask, -adv[:, None] * ratio, 0.0)) / T_CONST

  ref_loss, ref_grads = jax.value_and_grad(reference)(params)
  np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5, atol=1e-7)
  _assert_tree_close(grads, ref_grads, rtol=1e-4, atol=1e-7)
  assert float(optax.global_norm(ref_grads)) > 1e-3  # the comparison is not vacuous
  assert float(metrics["loss/sft"]) == 0.0


def test_all_sft_batch_gradient_is_token_mean_nll(params, official_no_entropy):
  # Every question fails, so each contributes one demonstration row and no rollouts.
  rows = _rows(hybrid.HardGate(threshold=hybrid.Threshold.of_count(0)), seed=2, q=4, n=4,
               all_wrong=(0, 1, 2, 3))
  assert rows.is_demo.all()
  batch = batching.pack(rows, config=PACK)
  loss, grads, _ = official_no_entropy.loss_and_grads(params, batch)
  mask = _flat(batch, "response_mask")

  def reference(p):
    logp, _ = _ref_logp_entropy(p, batch)
    return -jnp.sum(jnp.where(mask, logp, 0.0)) / mask.sum()

  ref_loss, ref_grads = jax.value_and_grad(reference)(params)
  np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
  _assert_tree_close(grads, ref_grads, rtol=1e-4, atol=1e-7)


def _mixed_rows():
  return _rows(hybrid.HardGate(threshold=hybrid.Threshold.of_count(1)), seed=3, q=5, n=3, all_wrong=(0,),
               all_right=(3, 4))


def test_mixed_batch_official_mode(params):
  """RL Σ/T + SFT token-mean over the block's demo tokens − c·token-mean entropy, per micro-batch and per
  virtual rank (official_ranks=2: each micro-batch of 8 rows is two ranks' blocks of 4, averaged), then
  micro-batch losses summed; the second micro-batch holds no demonstration (its SFT term is skipped)."""
  rows = _mixed_rows()
  order = np.argsort(~rows.is_demo, kind="stable")  # demos first: micro-batch 0 has them all
  rows = batching.Rows(prompts=[rows.prompts[i] for i in order], responses=[rows.responses[i] for i in order],
                       old_logp=None, is_demo=rows.is_demo[order], group_ids=rows.group_ids[order],
                       question_index=rows.question_index[order], rewards=rows.rewards[order],
                       rl_weight=rows.rl_weight[order], sft_weight=rows.sft_weight[order])
  assert 0 < rows.is_demo.sum() <= 3 and 8 < rows.num_rows <= 16
  pack = batching.PackConfig(length_buckets=(16,), rows_per_micro_batch=8)
  batch = batching.pack(rows, config=pack)
  assert batch.tokens.shape[0] == 2 and not batch.is_demo[1].any()
  coef = 0.001
  step = TrainStep(CFG, loss=LossConfig(algorithm=upge.HptRl(width=T_CONST), entropy_coeff=coef, logprob_chunk=24,
                                        official_ranks=2),
                   optimizer=optim_lib.make_optimizer(optim_lib.OptimConfig()))
  loss, grads, metrics = step.loss_and_grads(params, batch)

  adv = np.zeros(_flat(batch, "rewards").shape)
  adv[:rows.num_rows] = _dr_grpo_advantages(rows)
  mask = _flat(batch, "response_mask").reshape(4, 4, -1)  # [micro-batch × rank, rows, L]
  demo = _flat(batch, "is_demo").reshape(4, 4)
  adv = adv.reshape(4, 4)

  def reference(p):
    logp, ent = _ref_logp_entropy(p, batch)
    logp, ent = logp.reshape(4, 4, -1), ent.reshape(4, 4, -1)
    total = 0.0
    for blk in range(4):
      on = mask[blk] & ~demo[blk][:, None]
      off = mask[blk] & demo[blk][:, None]
      ratio = jnp.exp(logp[blk] - jax.lax.stop_gradient(logp[blk]))
      rl = jnp.sum(jnp.where(on, -adv[blk][:, None] * ratio, 0.0)) / T_CONST
      sft = -jnp.sum(jnp.where(off, logp[blk], 0.0)) / off.sum() if off.any() else 0.0  # skipped if empty
      bonus = jnp.sum(jnp.where(mask[blk], ent[blk], 0.0)) / mask[blk].sum() if mask[blk].any() else 0.0
      total = total + (rl + sft - coef * bonus) / 2  # mean over the 2 ranks of a micro-batch
    return total

  ref_loss, ref_grads = jax.value_and_grad(reference)(params)
  np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
  _assert_tree_close(grads, ref_grads, rtol=1e-4, atol=1e-7)
  assert float(metrics["loss/sft"]) > 0 and float(metrics["loss/entropy"]) < 0


@pytest.fixture(scope="module")
def paper_step():
  # logprob_chunk=None: the full-logits path (the other steps here use the chunked one).
  loss = LossConfig(algorithm=upge.HptRl(width=T_CONST), mode=LossMode.PAPER, rl_width=T_CONST,
                    entropy_coeff=0.001, logprob_chunk=None)
  return TrainStep(CFG, loss=loss, optimizer=optim_lib.make_optimizer(optim_lib.OptimConfig()))


def test_mixed_batch_paper_mode_and_accumulation(params, paper_step):
  """Paper: L = (1/Q) Σ_q [α_q (1/n_q) Σ_i Σ_t −Â r / T + β_q token-mean NLL(demo_q)] − c·H̄; and the same
  value and gradient from 4 micro-batches of 2 rows as from 1 micro-batch of 8."""
  rows = _rows(hybrid.HardGate(threshold=hybrid.Threshold.of_count(1)), seed=4, q=3, n=3, all_wrong=(0,))
  assert rows.num_rows <= 8 and rows.is_demo.any() and (~rows.is_demo).any()
  big = batching.pack(rows, config=batching.PackConfig(length_buckets=(16,), rows_per_micro_batch=8))
  small = batching.pack(rows, config=batching.PackConfig(length_buckets=(16,), rows_per_micro_batch=2,
                                                         micro_batch_multiple=4))
  assert small.tokens.shape[:2] == (4, 2)
  loss_big, grads_big, _ = paper_step.loss_and_grads(params, big)
  loss_small, grads_small, _ = paper_step.loss_and_grads(params, small)

  n_rows = rows.num_rows
  adv = _dr_grpo_advantages(rows)
  mask = _flat(big, "response_mask")[:n_rows]
  questions = np.unique(rows.question_index)

  def reference(p):
    logp, ent = _ref_logp_entropy(p, big)
    logp, ent = logp[:n_rows], ent[:n_rows]
    total = 0.0
    for q in questions:
      rl_idx = np.flatnonzero((rows.question_index == q) & ~rows.is_demo)
      demo_idx = np.flatnonzero((rows.question_index == q) & rows.is_demo)
      if rl_idx.size:  # α_q = 1
        lp = logp[rl_idx]
        ratio = jnp.exp(lp - jax.lax.stop_gradient(lp))
        total += jnp.sum(jnp.where(mask[rl_idx], -adv[rl_idx][:, None] * ratio, 0.0)) / (rl_idx.size * T_CONST)
      for i in demo_idx:  # β_q = 1
        total += -jnp.sum(jnp.where(mask[i], logp[i], 0.0)) / mask[i].sum()
    bonus = jnp.sum(jnp.where(mask, ent, 0.0)) / mask.sum()
    return total / questions.size - 0.001 * bonus

  ref_loss, ref_grads = jax.value_and_grad(reference)(params)
  np.testing.assert_allclose(float(loss_big), float(ref_loss), rtol=1e-5)
  _assert_tree_close(grads_big, ref_grads, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(float(loss_small), float(loss_big), rtol=1e-5)
  _assert_tree_close(grads_small, grads_big, rtol=1e-4, atol=1e-7)


def test_sharded_step_equals_single_device_and_skips_bad_gradients(capfd):
  rows = _mixed_rows()
  batch = batching.pack(rows, config=batching.PackConfig(length_buckets=(16,), rows_per_micro_batch=8))
  optimizer = optim_lib.make_optimizer(optim_lib.OptimConfig(learning_rate=1e-3))
  loss = LossConfig(algorithm=upge.HptRl(width=T_CONST), logprob_chunk=32)
  mesh = mesh_lib.MeshConfig(data=2, fsdp=2, tensor=2).build()
  results = []
  for m in (None, mesh):
    state = state_lib.create_train_state(CFG, optimizer, seed=0, mesh=m)
    before = jax.device_get(state.params)
    step = TrainStep(CFG, loss=loss, optimizer=optimizer, mesh=m)
    new_state, metrics = step(state, batch)
    results.append((jax.device_get(new_state.params), jax.device_get(metrics)))
    if m is None:
      single = (step, new_state)
    else:
      # Parameters really are sharded: the fsdp × tensor split of the embedding.
      spec = new_state.params["embed_tokens"]["embedding"].sharding.spec
      assert spec == jax.sharding.PartitionSpec("tensor", "fsdp")
  (p_one, m_one), (p_mesh, m_mesh) = results
  # XLA's SPMD partitioner logs (to the C++ stderr) when it has to replicate a tensor to reshard it;
  # the embedding gather from the fsdp-split table used to trigger it on this 2 × 2 × 2 mesh.
  assert "Involuntary full rematerialization" not in capfd.readouterr().err
  for key in ("loss/total", "optim/grad_norm"):
    np.testing.assert_allclose(m_mesh[key], m_one[key], rtol=1e-5)
  # Absolute 1e-5 (the bound): k_proj's bias has an exactly-zero true gradient (softmax is
  # invariant to q·b), so its float noise, which differs with the reduction order, is what Adam
  # normalises; every other parameter agrees far more tightly.
  _assert_tree_close(p_mesh, p_one, rtol=0, atol=1e-5)
  moved = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(p_one), jax.tree.leaves(before)))
  assert moved > 1e-4  # lr 1e-3 Adam: the update moved parameters

  # A NaN old log-prob makes the gradient non-finite: params and optimizer state must stay, counted.
  step, state = single
  bad_rows = batching.Rows(**{f: getattr(rows, f) for f in ("prompts", "responses", "is_demo", "group_ids",
                                                            "question_index", "rewards", "rl_weight",
                                                            "sft_weight")},
                           old_logp=[np.full(len(r), np.nan, np.float32) for r in rows.responses])
  bad = batching.pack(bad_rows, config=batching.PackConfig(length_buckets=(16,), rows_per_micro_batch=8))
  params_before, opt_before = jax.device_get((state.params, state.opt_state))
  new_state, metrics = step(state, bad)
  assert bool(metrics["optim/skipped"]) and int(metrics["optim/num_skipped"]) == 1
  assert not np.isfinite(float(metrics["optim/grad_norm"]))
  _assert_tree_close(jax.device_get(new_state.params), params_before, rtol=0, atol=0)
  _assert_tree_close(jax.device_get(new_state.opt_state.inner), opt_before.inner, rtol=0, atol=0)


def test_bf16_compute_keeps_fp32_master_weights(params, official_no_entropy):
  """Mixed precision: the model computes in bf16, gradients and master weights stay fp32."""
  # Same shapes as the fp32 tests above, so the fp32 side reuses their compiled step.
  rows = _rows(hybrid.HardGate(threshold=hybrid.Threshold.of_count(1)), seed=4, q=3, n=3, all_wrong=(0,))
  batch = batching.pack(rows, config=PACK)
  assert rows.is_demo.any() and batch.tokens.shape[:2] == (1, 8)
  bf16 = TrainStep(CFG.replace(dtype_policy=models.DTypePolicy.BFLOAT16), loss=official_no_entropy.loss_config,
                   optimizer=official_no_entropy.optimizer)
  loss16, grads16, _ = bf16.loss_and_grads(params, batch)
  loss32, grads32, _ = official_no_entropy.loss_and_grads(params, batch)
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads16))
  np.testing.assert_allclose(float(loss16), float(loss32), rtol=2e-2)
  g16 = np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads16)])
  g32 = np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads32)])
  cosine = g16 @ g32 / (np.linalg.norm(g16) * np.linalg.norm(g32))
  assert cosine > 0.99, cosine

  # One update: master weights and AdamW moments stay fp32 and move (bf16 rounding of a 5e-6 step
  # would leave most weights unchanged; fp32 masters must not).
  before = jax.tree.map(np.array, params)  # host copies: the step donates its parameters
  state = state_lib.create_train_state(CFG, bf16.optimizer, seed=0, params=jax.tree.map(np.array, before))
  new_state, metrics = bf16(state, batch)
  assert not bool(metrics["optim/skipped"])
  leaves = jax.tree.leaves(new_state.params) + jax.tree.leaves(new_state.opt_state.inner)
  assert all(x.dtype == jnp.float32 for x in leaves if jnp.issubdtype(x.dtype, jnp.floating))
  changed = sum(int(np.sum(np.asarray(a) != b)) for a, b in zip(jax.tree.leaves(new_state.params),
                                                                jax.tree.leaves(before)))
  total = sum(b.size for b in jax.tree.leaves(before))
  assert changed > 0.9 * total, (changed, total)  # lr 5e-6 moves (almost) every fp32 weight
