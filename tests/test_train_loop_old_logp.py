"""π_old of the later mini-batches: the sampler's log-probs when the sampling policy is the training
policy, a teacher-forced recompute with the step's starting parameters otherwise.

References: the recompute at the sampling temperature must reproduce the sampler's own log-probs
(another code path: KV-cache decoding); at another temperature it must equal a float64 NumPy
log-softmax of the model's full logits over plain `prompt ++ response` rows. The loop packs the
shared-prompt layout (each distinct prompt once per micro-batch): its recompute must equal the plain
layout's token for token (both layouts list the response tokens in the same row-major order). The same run (its compiled sampler) also checks DAPO's dynamic
sampling against a replay of the data order."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from hpt_jax.training import config as c
from hpt_jax.training import loop
from hpt_jax.training import batching
from hpt_jax.training.batching import pack
from hpt_jax.training.mesh import MeshConfig
from hpt_jax.training.old_logprobs import Recompute
from hpt_jax.training.rollout_phase import collect

import test_train_loop_fixtures as fx

T_LOSS = 0.7  # the sampler draws at 1.0


@pytest.fixture(scope="module")
def step_rows(tmp_path_factory):
  """A run whose loss temperature differs from the rollout temperature, its initial state, and one
  step's rollout + demonstration rows (4 questions x (4 rollouts + 1 demo) = 20 rows, 3 mini-batches)."""
  base = fx.tiny_config(tmp_path_factory.mktemp("builtin"), mesh=MeshConfig(data=2))
  phase = base.phases[0]
  config = dataclasses.replace(base, phases=(dataclasses.replace(
      phase, loss=dataclasses.replace(phase.loss, temperature=T_LOSS)),))
  run = loop._Run(config, tmp_path_factory.mktemp("run"), None)
  state = run.initial_state()
  with jax.set_mesh(run.mesh):
    experience = collect(
        params=run.sampler_params(state), questions=run.data.next_batch(), source=c.RowSource.ROLLOUTS_AND_DEMOS,
        sampler=run.sampler, strategy=run.strategy, num_samples=4, max_new_tokens=16, seed=3,
        score_fn=lambda texts, truths: (np.zeros(len(texts)), 0), gate=None, gate_state=None)
  yield run, state, experience.rows
  run.data.close()


def _reference_logp(run, params, batch, temperature):
  """[M, Bm, L] float64 log softmax(logits / T)[target] from the full logits, in NumPy."""
  model = nnx.merge(run.graphdef, nnx.State(jax.device_get(params)))

  @jax.jit
  def logits(tokens, positions, mask):
    hidden, _ = model(tokens, positions=positions, attention_mask=mask)
    return model.logits(hidden)

  out = []
  for m in range(batch.tokens.shape[0]):
    z = np.asarray(logits(batch.tokens[m], batch.positions[m], batch.attention_mask[m]), np.float64) / temperature
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    out.append(np.take_along_axis(logp, np.asarray(batch.targets[m])[..., None], -1)[..., 0])
  return np.stack(out)


def _plain_config(run):
  return dataclasses.replace(run.pack_configs[0], shared_prompts=None)


def test_recompute_is_used_when_the_loss_temperature_differs(step_rows):
  run, state, rows = step_rows
  assert rows.num_rows == 20 and rows.is_demo.sum() == 4
  assert run.pack_configs[0].shared_prompts is not None  # the loop's default layout
  advantages = np.zeros(rows.num_rows)
  batches, tokens, recomputed = run.update_batches(state, rows, advantages, 0)
  assert len(batches) == 3 and recomputed == 2
  assert not bool(batches[0].has_old_logp)  # the first mini-batch stays on-policy
  # The token count is prompt + response of every row, as the plain rows' attention mask counts it.
  assert tokens == sum(len(p) + len(r) for p, r in zip(rows.prompts, rows.responses))
  for k, batch in enumerate(batches[1:], start=1):
    host = jax.device_get(batch)
    assert host.prefix_tokens is not None and bool(host.has_old_logp)
    rollout = host.response_mask & ~host.is_demo[..., None]
    demo = host.response_mask & host.is_demo[..., None]
    # The float64 reference over plain rows of the same rows (same response tokens, same order).
    plain = pack(loop.take_rows(rows, 8 * k, min(8 * k + 8, 20), keep_old_logp=True), config=_plain_config(run))
    plain_rollout = plain.response_mask & ~plain.is_demo[..., None]
    ref = _reference_logp(run, state.params, plain, T_LOSS)
    np.testing.assert_allclose(host.old_logp[rollout], ref[plain_rollout], atol=1e-5, rtol=0)
    # Demonstrations keep the offline reference π_old ≡ 1.
    assert demo.any() and np.all(host.old_logp[demo] == 0)
    # The sampler's log-probs (at T = 1) are a different distribution: the recompute replaced them.
    assert np.abs(plain.old_logp[plain_rollout] - host.old_logp[rollout]).max() > 1e-2


@pytest.mark.parametrize("shared", [False, True], ids=["plain", "shared"])
def test_recompute_equals_the_sampler_logprobs_when_nothing_differs(step_rows, shared):
  run, state, rows = step_rows
  config = run.pack_configs[0] if shared else _plain_config(run)
  host_batch = pack(loop.take_rows(rows, 0, 20, keep_old_logp=True), config=config)
  assert (host_batch.prefix_tokens is not None) == shared
  rollout = host_batch.response_mask & ~host_batch.is_demo[..., None]
  recompute = Recompute(run.model_config, temperature=1.0, logprob_chunk=run.config.phases[0].loss.logprob_chunk,
                        mesh=run.mesh)
  out = jax.device_get(recompute(state.params, jax.device_put(host_batch, run.batch_shardings(host_batch))))
  assert rollout.sum() > 20
  np.testing.assert_allclose(out.old_logp[rollout], host_batch.old_logp[rollout], atol=1e-5, rtol=0)
  np.testing.assert_array_equal(out.old_logp[~rollout], host_batch.old_logp[~rollout])
  # An independent check of the same numbers from the full logits over plain rows.
  plain = pack(loop.take_rows(rows, 0, 20, keep_old_logp=True), config=_plain_config(run))
  ref = _reference_logp(run, state.params, plain, 1.0)
  np.testing.assert_allclose(out.old_logp[rollout], ref[plain.response_mask & ~plain.is_demo[..., None]],
                             atol=1e-5, rtol=0)


def test_shared_recompute_equals_the_plain_recompute(step_rows):
  """The two layouts' recompute passes (another temperature, so neither is the sampler's) agree token
  for token, with each prompt stored once per micro-batch in the shared one."""
  run, state, rows = step_rows
  recompute = run.recompute[0]
  assert recompute is not None  # T_LOSS differs from the sampling temperature
  out = {}
  for name, config in (("plain", _plain_config(run)), ("shared", run.pack_configs[0])):
    host_batch = pack(loop.take_rows(rows, 0, 20, keep_old_logp=True), config=config)
    batch = recompute(state.params, jax.device_put(host_batch, run.batch_shardings(host_batch)))
    out[name] = jax.device_get(batch)
  plain, shared = out["plain"], out["shared"]
  # 20 rows (4 prompts x (4 rollouts + 1 demonstration)) in micro-batches of 4 rows: each holds at
  # most 2 distinct prompts, rounded up to the mesh's 2 batch shards, where plain rows run 4 prompts.
  bm = run.config.batch.rows_per_micro_batch
  distinct = max(len({tuple(np.asarray(p).tolist()) for p in rows.prompts[i:i + bm]}) for i in range(0, 20, bm))
  assert distinct == 2 and shared.prefix_tokens.shape[:2] == (plain.tokens.shape[0], 2) and bm == 4
  assert batching.real_tokens(shared) == batching.real_tokens(plain)
  np.testing.assert_array_equal(shared.response_mask.sum(), plain.response_mask.sum())
  np.testing.assert_allclose(shared.old_logp[shared.response_mask], plain.old_logp[plain.response_mask],
                             atol=2e-6, rtol=0)


def test_dynamic_sampling_refills_from_the_data_order_with_the_real_sampler(step_rows):
  """DAPO's filter wired into a run: refills come from the run's data sampler; the kept groups are the
  informative ones in the order a replay of the data order and the sampler gives."""
  from hpt_jax.training.config import GroupFilter, RowSource
  from hpt_jax.training.rollout_phase import try_seed
  run, state, _ = step_rows
  cfg = run.config
  run.config = dataclasses.replace(cfg, sampling=dataclasses.replace(
      cfg.sampling, group_filter=GroupFilter.EQUAL_REWARDS, max_sampling_tries=4))
  try:
    assert run.dynamic_sampling(cfg.phases[0]) is None  # HPT's gate keeps every group
    dynamic = run.dynamic_sampling(dataclasses.replace(cfg.phases[0], rows=RowSource.ROLLOUTS))
  finally:
    run.config = cfg
  position = run.data.state_dict()
  params = run.sampler_params(state)
  with jax.set_mesh(run.mesh):
    exp = collect(params=params, questions=run.data.next_batch(), source=RowSource.ROLLOUTS, sampler=run.sampler,
                  strategy=run.strategy, num_samples=4, max_new_tokens=16, seed=7, score_fn=fx.lenient_scorer,
                  gate=None, gate_state=None, dynamic=dynamic)
    # Replay: the same data order, each batch sampled with its try's seed, the rule applied by hand.
    run.data.load_state_dict(position)
    kept, tries = [], 0
    while len(kept) < 4 and tries < 4:
      questions = run.data.next_batch()
      out = run.sampler.generate(params, [q.prompt for q in questions], strategy=run.strategy, max_new_tokens=16,
                                 num_samples=4, seed=try_seed(7, tries), prompt_ids=[q.index for q in questions])
      scores = fx.lenient_scorer(out.texts, [q.ground_truth for q in questions for _ in range(4)])[0].reshape(4, 4)
      kept += [q for q, s in zip(questions, scores) if len(set(s)) > 1]
      tries += 1
  # With this seed the first batch has uninformative groups, and refills complete the step.
  assert tries >= 2 and len(kept) >= 4, (tries, len(kept))
  assert exp.metrics["sampling/tries"] == tries and exp.rows.num_rows == 16
  assert [np.asarray(p).tolist() for p in exp.rows.prompts[::4]] == [np.asarray(q.prompt).tolist() for q in kept[:4]]
  assert all(len(set(exp.rows.rewards[i:i + 4])) > 1 for i in range(0, 16, 4))
