"""π_old of the later mini-batches: the sampler's log-probs when the sampling policy is the training
policy, a teacher-forced recompute with the step's starting parameters otherwise.

References: the recompute at the sampling temperature must reproduce the sampler's own log-probs
(another code path: KV-cache decoding); at another temperature it must equal a float64 NumPy
log-softmax of the model's full logits."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from hpt_jax.training import config as c
from hpt_jax.training import loop
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


def test_recompute_is_used_when_the_loss_temperature_differs(step_rows):
  run, state, rows = step_rows
  assert rows.num_rows == 20 and rows.is_demo.sum() == 4
  advantages = np.zeros(rows.num_rows)
  batches, _, recomputed = run.update_batches(state, rows, advantages, 0)
  assert len(batches) == 3 and recomputed == 2
  assert not bool(batches[0].has_old_logp)  # the first mini-batch stays on-policy
  for k, batch in enumerate(batches[1:], start=1):
    host = jax.device_get(batch)
    assert bool(host.has_old_logp)
    rollout = host.response_mask & ~host.is_demo[..., None]
    demo = host.response_mask & host.is_demo[..., None]
    ref = _reference_logp(run, state.params, host, T_LOSS)
    np.testing.assert_allclose(host.old_logp[rollout], ref[rollout], atol=1e-5, rtol=0)
    # Demonstrations keep the offline reference π_old ≡ 1.
    assert demo.any() and np.all(host.old_logp[demo] == 0)
    # The sampler's log-probs (at T = 1) are a different distribution: the recompute replaced them.
    sampler = pack(loop.take_rows(rows, 8 * k, min(8 * k + 8, 20), keep_old_logp=True), config=run.pack_config)
    assert np.abs(sampler.old_logp[rollout] - host.old_logp[rollout]).max() > 1e-2


def test_recompute_equals_the_sampler_logprobs_when_nothing_differs(step_rows):
  run, state, rows = step_rows
  host_batch = pack(loop.take_rows(rows, 0, 20, keep_old_logp=True), config=run.pack_config)
  rollout = host_batch.response_mask & ~host_batch.is_demo[..., None]
  recompute = Recompute(run.model_config, temperature=1.0, logprob_chunk=run.config.phases[0].loss.logprob_chunk,
                        mesh=run.mesh)
  out = jax.device_get(recompute(state.params, jax.device_put(host_batch, run.batch_shardings)))
  assert rollout.sum() > 20
  np.testing.assert_allclose(out.old_logp[rollout], host_batch.old_logp[rollout], atol=1e-5, rtol=0)
  np.testing.assert_array_equal(out.old_logp[~rollout], host_batch.old_logp[~rollout])
  # An independent check of the same numbers from the full logits.
  ref = _reference_logp(run, state.params, host_batch, 1.0)
  np.testing.assert_allclose(out.old_logp[rollout], ref[rollout], atol=1e-5, rtol=0)
