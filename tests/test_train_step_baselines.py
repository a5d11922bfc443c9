"""Every baseline of the loop's table through one jitted TrainStep, against its formula written here.

For each name of `training.config.baseline` (SFT, GRPO, Dr.GRPO, DAPO, CISPO, GSPO, LUFFY, SRFT, HPT)
the step's `loss_and_grads` on a tiny model is compared with an independent reference: teacher-forced
log-probs and entropies from the model's full logits (no chunking, no upge code), the algorithm's
per-token loss and normalisation written out below in jnp, and the parameter gradient pulled back
through the model with one `jax.vjp`. π_old ≠ π_θ: the rollouts' old log-probs are the current ones
shifted by δ ∈ {0, ±0.1, ±0.21, ±0.3, ±0.6, ±1.5, ±2.6} per token, so token ratios fall inside the clip
range, beyond 1±ε on both sides (and beyond DAPO's 1.28), and past the dual-clip bounds 3 and 10;
no ratio sits on a boundary (ESTIMATORS.md §6). Every fourth rollout keeps δ ≡ 0, so GSPO sees
sequences inside its 3e-4/4e-4 range as well as clipped ones.

Value convention (the project's, `upge.denominators`): a weight π_θ/π_ref has value 1 when π_ref = π_θ
(on-policy terms: SRFT's rollouts), so the loss value of −Ã·ℓ is −Ã·1; gradients are the papers'.

Shapes: every batch is packed to 2 micro-batches × 8 rows × 16 positions, so the reference's model
pass compiles once; each baseline compiles its own step (9 small programs).
"""

import dataclasses

import numpy as np
import optax
import pytest

import jax
import jax.numpy as jnp
from flax import nnx

from hpt_jax import hybrid, models
from hpt_jax.hybrid.objective import LossMode
from hpt_jax.training import batching, optimizer as optim_lib, state as state_lib
from hpt_jax.training.config import RowSource, baseline
from hpt_jax.training.train_step import TrainStep

WIDTH = 12  # the constant T of the Σ/T and Dr.GRPO normalisers (the loop passes the max response length)
ENTROPY_COEFF = 0.001  # the official bonus of LUFFY / SRFT / HPT in the table
PACK = batching.PackConfig(length_buckets=(16,), rows_per_micro_batch=8, micro_batch_multiple=2)
CFG = models.presets.tiny(num_layers=2, vocab_size=64, hidden_size=32, intermediate_size=64, num_heads=4,
                          num_kv_heads=2, head_dim=8)
DELTAS = np.array([0.0, 0.1, -0.1, 0.21, -0.21, 0.3, -0.3, 0.6, -0.6, 1.5, -1.5, 2.6, -2.6])
REWARDS = [np.array([1.0, 0.0, 0.0, 1.0]), np.array([1.0, 1.0, 0.0, 1.0]), np.zeros(4)]  # q2 is unsolved
NAMES = ("sft", "grpo", "dr_grpo", "dapo", "cispo", "gspo", "luffy", "srft", "hpt")


# ----------------------------------------------------------------------------------- the reference


def _forward(params, tokens, positions, attention):
  """Teacher-forced full logits → (log-softmax [N, L, V], entropy [N, L])."""
  model = nnx.merge(state_lib.model_graphdef(CFG), nnx.State(params))
  hidden, _ = model(tokens, positions=positions, attention_mask=attention)
  logp_all = jax.nn.log_softmax(model.logits(hidden), axis=-1)
  return logp_all, -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)


@jax.jit
def _ref_logp_entropy(params, tokens, positions, attention, targets):
  logp_all, entropy = _forward(params, tokens, positions, attention)
  return jnp.take_along_axis(logp_all, targets[..., None], axis=-1)[..., 0], entropy


@jax.jit
def _pull_back(params, tokens, positions, attention, targets, d_logp, d_entropy):
  """∂L/∂params from ∂L/∂ℓ and ∂L/∂H (the chain rule through the model)."""
  _, vjp = jax.vjp(lambda p: _ref_logp_entropy(p, tokens, positions, attention, targets), params)
  return vjp((d_logp, d_entropy))[0]


def _flat(batch, field):
  x = np.asarray(getattr(batch, field))
  return x.reshape(-1, *x.shape[2:])


def _model_inputs(batch):
  return tuple(jnp.asarray(_flat(batch, f)) for f in ("tokens", "positions", "attention_mask", "targets"))


def _group_advantages(rewards, groups, valid, *, use_std):
  """verl GRPO / Dr.GRPO in NumPy float64: unbiased σ, ε 1e-6, a singleton has μ = 0, σ = 1."""
  adv = np.zeros(rewards.shape)
  for g in np.unique(groups[valid]):
    idx = valid & (groups == g)
    r = rewards[idx]
    if idx.sum() == 1:
      adv[idx] = r / np.float32(1 + 1e-6) if use_std else r
    else:
      adv[idx] = (r - r.mean()) / (r.std(ddof=1) + 1e-6) if use_std else r - r.mean()
  return adv


def _clip(x, lo, hi):
  return jnp.minimum(jnp.maximum(x, lo), hi)


def _ppo_token_loss(ratio, adv, *, eps_low, eps_high, dual):
  """max(−A r, −A clip(r)); for A < 0 also min(·, −A c)."""
  loss = jnp.maximum(-adv * ratio, -adv * _clip(ratio, 1 - eps_low, 1 + eps_high))
  return loss if dual is None else jnp.where(adv < 0, jnp.minimum(loss, -adv * dual), loss)


def _token_mean(x, mask):
  return jnp.sum(jnp.where(mask, x, 0.0)) / max(mask.sum(), 1)


def _seq_mean_token_mean(x, mask):
  rows = mask.any(-1)
  per_row = jnp.sum(jnp.where(mask, x, 0.0), -1) / np.maximum(mask.sum(-1), 1)
  return jnp.sum(jnp.where(rows, per_row, 0.0)) / rows.sum()


def _per_micro_batch(fn, *arrays):
  """Σ over the micro-batches of fn(arrays of that micro-batch) — the official arithmetic."""
  m = PACK.micro_batch_multiple
  split = [a.reshape(m, -1, *a.shape[1:]) for a in arrays]
  return sum(fn(*[a[i] for a in split]) for i in range(m))


def reference_loss(name, logp, entropy, d):
  """The baseline's loss from ℓ [N, L] and H [N, L] (N = M·Bm rows); `d` holds the constant fields."""
  mask, demo, old = d["mask"], d["demo"], d["old_logp"]
  on, off = mask & ~demo[:, None], mask & demo[:, None]
  sg = jax.lax.stop_gradient
  delta = logp - old
  if name == "sft":  # token-mean NLL over all demonstration tokens of the batch
    return _token_mean(-logp, mask)
  if name in ("grpo", "dr_grpo", "dapo", "cispo"):
    a = d["adv_std" if name != "dr_grpo" else "adv_mean"][:, None]
    ratio = jnp.exp(jnp.clip(delta, -20.0, 20.0))  # verl's ±20 clamp (never reached here)
    if name == "cispo":  # the clipped ratio is a constant weight on −A·ℓ
      return _token_mean(-sg(_clip(ratio, 0.8, 1.2)) * a * logp, mask)
    eps_high, dual = (0.28, 10.0) if name == "dapo" else (0.2, 3.0)
    loss = _ppo_token_loss(ratio, a, eps_low=0.2, eps_high=eps_high, dual=dual)
    if name == "grpo":
      return _seq_mean_token_mean(loss, mask)
    if name == "dr_grpo":  # Σ / (G·T)
      return jnp.sum(jnp.where(mask, loss, 0.0)) / (mask.any(-1).sum() * WIDTH)
    return _token_mean(loss, mask)
  if name == "gspo":
    a = d["adv_std"][:, None]
    seq = jnp.sum(jnp.where(mask, delta, 0.0), -1) / np.maximum(mask.sum(-1), 1)  # mean log-ratio of row i
    s = jnp.exp(sg(seq))[:, None] * jnp.exp(logp - sg(logp))  # value s_i, gradient s_i·∇ℓ_it
    loss = jnp.maximum(-a * s, -a * _clip(s, 1 - 3e-4, 1 + 4e-4))
    return _seq_mean_token_mean(loss, mask)
  bonus = lambda h, m: -ENTROPY_COEFF * _token_mean(h, m)
  if name == "luffy":
    a = d["adv_mean"][:, None]
    prob = jnp.exp(logp)
    per_token = jnp.where(demo[:, None], -a * prob / (prob + 0.1), -a * jnp.exp(delta))
    pg = jnp.sum(jnp.where(mask, per_token, 0.0)) / WIDTH
    return pg + _per_micro_batch(bonus, entropy, mask)
  if name == "srft":
    a = d["adv_mean"][:, None]
    h_row = sg(jnp.sum(jnp.where(mask, entropy, 0.0), -1) / np.maximum(mask.sum(-1), 1))
    a_on = jnp.where(d["rewards"] == 1.0, 0.1 * jnp.exp(h_row), -1.0)[:, None]
    prob = jnp.exp(logp)
    per_token = jnp.where(demo[:, None], -a * prob / (prob + 0.1), -a_on * jnp.exp(logp - sg(logp)))
    pg = jnp.sum(jnp.where(mask, per_token, 0.0)) / WIDTH
    w_sft = (0.5 * jnp.exp(-h_row))[:, None]
    sft = lambda lp, w, m: _token_mean(-w * lp, m)  # 0 in a micro-batch without demonstrations
    return pg + _per_micro_batch(sft, logp, w_sft, off) + _per_micro_batch(bonus, entropy, mask)
  if name == "hpt":
    a = d["adv_mean"][:, None]
    rl = jnp.sum(jnp.where(on, -a * jnp.exp(delta), 0.0)) / WIDTH
    sft = lambda lp, m: _token_mean(-lp, m)
    return rl + _per_micro_batch(sft, logp, off) + _per_micro_batch(bonus, entropy, mask)
  raise AssertionError(name)


# ------------------------------------------------------------------------------------------ the rows


def _questions():
  rng = np.random.default_rng(11)
  prompts = [rng.integers(1, 64, rng.integers(2, 5)) for _ in REWARDS]
  rollouts = [[rng.integers(1, 64, rng.integers(3, 8)) for _ in r] for r in REWARDS]
  demos = [rng.integers(1, 64, rng.integers(4, 9)) for _ in REWARDS]
  return prompts, rollouts, demos


def _decision(source):
  """How the loop routes each question for a row source (γ = 0 for the gate)."""
  q = len(REWARDS)
  if source is RowSource.GATE:
    correct = np.array([int(r.sum()) for r in REWARDS])
    return hybrid.decide(hybrid.HardGate(threshold=hybrid.Threshold.of_count(0)), correct=correct,
                         num_rollouts=4)
  rl = source in (RowSource.ROLLOUTS, RowSource.ROLLOUTS_AND_DEMOS)
  demo = source in (RowSource.DEMOS, RowSource.ROLLOUTS_AND_DEMOS)
  ones, zeros = np.ones(q), np.zeros(q)
  return hybrid.GateDecision(success_rate=zeros, alpha=ones if rl else zeros, beta=ones if demo else zeros,
                             keep_rollouts=np.full(q, rl), add_demo=np.full(q, demo),
                             demo_sft_weight=ones if source is RowSource.DEMOS else zeros,
                             demo_off_policy_weight=ones if source is RowSource.ROLLOUTS_AND_DEMOS else zeros)


@pytest.fixture(scope="module")
def setup():
  params = state_lib.create_train_state(CFG, optax.identity(), seed=0).params
  prompts, rollouts, demos = _questions()
  # π_θ's own log-probs of every rollout token (one packed batch of the 12 rollouts), then π_old.
  flat = [r for q in rollouts for r in q]
  probe = batching.Rows(prompts=[prompts[i // 4] for i in range(12)], responses=flat, old_logp=None,
                        is_demo=np.zeros(12, bool), group_ids=np.arange(12) // 4,
                        question_index=np.arange(12) // 4, rewards=np.zeros(12), rl_weight=np.ones(12),
                        sft_weight=np.zeros(12))
  packed = batching.pack(probe, config=PACK)
  logp, _ = _ref_logp_entropy(params, *_model_inputs(packed))
  logp, mask = np.asarray(logp), _flat(packed, "response_mask")
  old, k = [], 0
  for i in range(12):
    lp = logp[i][mask[i]]
    delta = np.zeros(lp.size) if i % 4 == 0 else DELTAS[(k + np.arange(lp.size)) % DELTAS.size]
    k += lp.size
    old.append((lp - delta).astype(np.float32))
  old_logp = [old[4 * q:4 * q + 4] for q in range(len(REWARDS))]
  return params, dict(prompts=prompts, rollouts=rollouts, rollout_rewards=REWARDS, demos=demos,
                      rollout_old_logp=old_logp)


def _batch(source, questions):
  rows = hybrid.route(_decision(source), **questions,
                      demo_joins_group=source is RowSource.ROLLOUTS_AND_DEMOS)
  return rows, batching.pack(rows, config=PACK)


def _constants(batch):
  valid = _flat(batch, "row_valid")
  rewards, groups = _flat(batch, "rewards").astype(np.float64), _flat(batch, "group_ids")
  return dict(mask=_flat(batch, "response_mask"), demo=_flat(batch, "is_demo"),
              old_logp=jnp.asarray(_flat(batch, "old_logp")), rewards=jnp.asarray(rewards, jnp.float32),
              adv_std=jnp.asarray(_group_advantages(rewards, groups, valid, use_std=True), jnp.float32),
              adv_mean=jnp.asarray(_group_advantages(rewards, groups, valid, use_std=False), jnp.float32))


@pytest.mark.parametrize("name", NAMES)
def test_baseline_step_equals_its_formula(name, setup):
  params, questions = setup
  loss_config, source = baseline(name, width=WIDTH)
  rows, batch = _batch(source, questions)
  assert batch.tokens.shape == (2, 8, 16) and rows.num_rows > 2

  step = TrainStep(CFG, loss=loss_config, optimizer=optim_lib.make_optimizer(optim_lib.OptimConfig()))
  loss, grads, metrics = step.loss_and_grads(params, batch)

  inputs = _model_inputs(batch)
  logp, entropy = _ref_logp_entropy(params, *inputs)
  d = _constants(batch)
  ref_loss, (d_logp, d_entropy) = jax.value_and_grad(
      lambda lp, h: reference_loss(name, lp, h, d), argnums=(0, 1))(logp, entropy)
  ref_grads = _pull_back(params, *inputs, d_logp, d_entropy)

  np.testing.assert_allclose(float(loss), float(ref_loss), rtol=2e-5, atol=1e-7)
  g, g_ref = jax.tree.leaves(grads), jax.tree.leaves(ref_grads)
  scale = max(float(np.abs(x).max()) for x in g_ref)
  assert scale > 1e-4  # the comparison is not vacuous
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(grads), g_ref):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-4, atol=2e-5 * scale,
                               err_msg=f"{name}: {jax.tree_util.keystr(path)}")

  # The train step's entropy metric: token mean of H over every response token of the batch.
  mask = d["mask"]
  np.testing.assert_allclose(float(metrics["policy/entropy"]), float(_token_mean(entropy, mask)), rtol=1e-5)


def test_clipping_is_exercised(setup):
  """The shared π_old puts token ratios in every region the clipped baselines distinguish, and GSPO
  sequences on both sides of its range (otherwise the formulas above would not be tested)."""
  params, questions = setup
  _, batch = _batch(RowSource.ROLLOUTS, questions)
  logp, _ = _ref_logp_entropy(params, *_model_inputs(batch))
  d = _constants(batch)
  mask = d["mask"]
  ratio = np.exp(np.asarray(logp - d["old_logp"], np.float64))[mask]
  adv = np.broadcast_to(np.asarray(d["adv_std"])[:, None], mask.shape)[mask]
  # (region of r, the signs of Â for which that region behaves differently between the baselines)
  regions = (((0.0, 0.8), (1, -1)), ((0.8, 1.2), (1, -1)), ((1.2, 1.28), (1,)), ((1.28, 3.0), (1, -1)),
             ((3.0, 10.0), (-1,)), ((10.0, np.inf), (-1,)))
  for (lo, hi), signs in regions:
    inside = (ratio > lo) & (ratio < hi)
    for sign in signs:
      assert (inside & (np.sign(adv) == sign)).any(), (lo, hi, sign)
  assert np.min(np.abs(ratio[:, None] - np.array([0.8, 1.2, 1.28, 3.0, 10.0]))) > 1e-3  # no ties
  log_ratio = np.asarray(logp - d["old_logp"], np.float64)
  seq = np.array([log_ratio[i][mask[i]].mean() for i in range(mask.shape[0]) if mask[i].any()])
  in_range = (np.exp(seq) > 1 - 3e-4) & (np.exp(seq) < 1 + 4e-4)
  assert in_range.any() and (~in_range).any()
