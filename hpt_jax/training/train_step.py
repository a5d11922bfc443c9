"""The jitted, sharded train step: model → chunked log-probs → hybrid loss → accumulated grads → AdamW.

One call of `TrainStep` is one optimizer update over a packed batch `MicroBatches` [M, Bm, L]:

  1. before the scan, over the whole batch: Â from rewards and group ids (the configured estimator),
     and, for GLOBAL/PAPER normalisation, every term's batch-wide denominator (counts of masks, no
     model needed);
  2. `lax.scan` over the M micro-batches: the model's hidden states, then log π(target) and entropy in
     chunks of positions from hidden states (the [B, L, V] logits never exist), the objective's terms
     (`hpt_jax.hybrid.objective`), the micro-batch loss and its gradient, summed into fp32
     accumulators. OFFICIAL mode normalises each micro-batch by itself and SUMS the micro-batch
     gradients (the official verl-0.1 arithmetic); GLOBAL/PAPER divide by batch-wide denominators, so
     the sum over micro-batches is exactly the full-batch loss;
  3. the optimizer: pre-clip grad norm → skip if non-finite or too large → clip → AdamW.

Under a mesh, parameters and optimizer state are sharded by the model's rules table, batch rows over
data × fsdp; XLA inserts the reductions, so sums over rows are global across devices and the step
equals the single-device step. Parameters and optimizer state are donated. The master weights are
fp32; they are cast to the model config's dtype (bf16 on accelerators) inside the loss.

A batch in the shared-prompt layout (`PackConfig(shared_prompts=...)`) runs each distinct prompt of
the batch once per step, before the scan (`models.shared_prefix.prefix_states`, under `jax.vjp`); each
micro-batch's responses attend to their prompts' keys/values, whose cotangents are summed over the
micro-batches and pulled back through the prompts' forward once after the scan. Same loss and
gradient as plain rows; everything after the hidden states is the same.

Letters: M micro-batches, Bm rows each, L positions, R virtual ranks (OFFICIAL only).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from hpt_jax import upge
from hpt_jax.hybrid import objective
from hpt_jax.hybrid.objective import LossConfig, LossMode, RowInputs
from hpt_jax.models import ModelConfig
from hpt_jax.models import sharding as sharding_lib
from hpt_jax.training import mesh as mesh_lib
from hpt_jax.training import optimizer as optim_lib
from hpt_jax.training import response_packing
from hpt_jax.training import state as state_lib
from hpt_jax.models.shared_prefix import PrefixStates, prefix_states, suffix_hidden
from hpt_jax.training.batching import MicroBatches, real_tokens, step_prefixes
from hpt_jax.training.state import TrainState
from hpt_jax.typing import Array


def _split_rows(x: Array, blocks: int) -> Array:
  """[Bm, ...] -> [R, Bm/R, ...]."""
  return x.reshape(blocks, x.shape[0] // blocks, *x.shape[1:])


class TrainStep:
  """`step(state, batch) -> (state, metrics)` and `loss_and_grads(params, batch)`, both jitted.

  Args:
    model_config: the policy's config (its dtype is the compute dtype).
    loss: what to optimise (`LossConfig`).
    optimizer: an optax transformation wrapped by `optimizer.skip_bad_updates` (e.g.
      `make_optimizer(OptimConfig())`), whose state exposes `last_grad_norm` / `num_skipped`.
    mesh: a data × fsdp × tensor mesh, or None for the default device.
    response_granules: g > 0 runs each shared-prompt micro-batch's per-token work on its real
      response tokens packed into the smallest of k/g of its Bm·R slots (`training.response_packing`:
      g branches of one program, picked at run time, so nothing recompiles; the price is compile time).
      Same loss and gradients. 0 (default) runs every slot. Plain-row batches are never packed; the
      mesh must not split rows (data × fsdp = 1).
  """

  def __init__(self, model_config: ModelConfig, *, loss: LossConfig, optimizer: optax.GradientTransformation,
               mesh: Mesh | None = None, response_granules: int = 0):
    response_packing.check_granules(response_granules, mesh, owner="TrainStep")
    self.model_config = model_config
    self.loss_config = loss
    self.optimizer = optimizer
    self.mesh = mesh
    self.response_granules = response_granules
    self.graphdef = state_lib.model_graphdef(model_config)
    self._compute_dtype = jnp.dtype(model_config.dtype)
    # Jitted (grads, step) per batch layout (plain / shared-prompt): the layouts are different pytrees.
    self._jitted: dict[bool, tuple[Any, Any]] = {}
    if mesh is not None:
      abstract_state, abstract_pure = state_lib.abstract_params(model_config)
      self._p_shard = mesh_lib.param_shardings(abstract_state, mesh)
      self._o_shard = mesh_lib.opt_state_shardings(optimizer, abstract_pure, self._p_shard, mesh)

  def _functions(self, batch: MicroBatches) -> tuple[Any, Any]:
    """(grads, step) jitted for `batch`'s layout, with the mesh's shardings."""
    shared = batch.prefix_tokens is not None
    if shared not in self._jitted:
      if self.mesh is None:
        self._jitted[shared] = (jax.jit(self._loss_and_grads), jax.jit(self._update, donate_argnums=(0, 1)))
      else:
        p_shard, o_shard, rep = self._p_shard, self._o_shard, mesh_lib.replicated(self.mesh)
        b_shard = mesh_lib.batch_shardings(batch, self.mesh)
        self._jitted[shared] = (
            jax.jit(self._loss_and_grads, in_shardings=(p_shard, b_shard), out_shardings=(rep, p_shard, rep)),
            jax.jit(self._update, in_shardings=(p_shard, o_shard, rep, b_shard),
                    out_shardings=(p_shard, o_shard, rep, rep), donate_argnums=(0, 1)))
    return self._jitted[shared]

  # ----------------------------------------------------------------------------------------- public

  def place_batch(self, batch: MicroBatches) -> MicroBatches:
    """Moves a host batch onto the mesh with the step's batch sharding (no-op without a mesh)."""
    if self.mesh is None:
      return jax.tree.map(jnp.asarray, batch)
    return jax.device_put(batch, mesh_lib.batch_shardings(batch, self.mesh))

  def loss_and_grads(self, params: dict, batch: MicroBatches) -> tuple[Array, dict, dict]:
    """(loss, grads (pure dict like params), metrics) without an update."""
    with self._mesh_context():
      grads_fn, _ = self._functions(batch)
      return grads_fn(params, self.place_batch(batch))

  def __call__(self, state: TrainState, batch: MicroBatches) -> tuple[TrainState, dict]:
    """One optimizer update. `state.params` and `state.opt_state` are donated."""
    with self._mesh_context():
      _, step_fn = self._functions(batch)
      params, opt_state, step, metrics = step_fn(state.params, state.opt_state, state.step,
                                                 self.place_batch(batch))
    return state._replace(params=params, opt_state=opt_state, step=step), metrics

  # ---------------------------------------------------------------------------------------- private

  def _mesh_context(self):
    if self.mesh is None:
      return _NullContext()
    return jax.set_mesh(self.mesh)

  def _row_inputs(self, logp, entropy, mb: MicroBatches, advantages: Array, has_old_logp: Array,
                  num_questions: Array) -> RowInputs:
    old_logp = jnp.where(has_old_logp, mb.old_logp, jax.lax.stop_gradient(logp))
    return RowInputs(logp=logp, entropy=entropy, response_mask=mb.response_mask, old_logp=old_logp,
                     advantages=advantages, rewards=mb.rewards, is_demo=mb.is_demo, rl_weight=mb.rl_weight,
                     sft_weight=mb.sft_weight, group_size=mb.group_size, num_questions=num_questions)

  def _model(self, params: dict):
    """The policy in the compute dtype, its vocabulary tables gathered."""
    if self._compute_dtype != jnp.float32:
      params = jax.tree.map(lambda p: p.astype(self._compute_dtype), params)
    return nnx.merge(self.graphdef, nnx.State(_gather_vocab_tables(params)))

  def _policy_logprobs(self, params: dict, prefix: PrefixStates | None, prefix_mask: Array | None,
                       mb: MicroBatches, packed_tokens: int | None = None) -> tuple[Array, Array]:
    cfg = self.loss_config
    model = self._model(params)
    hidden = policy_hidden(model, mb, prefix, prefix_mask, packed_tokens=packed_tokens)
    if cfg.logprob_chunk is None:
      return upge.token_logprobs(model.logits(hidden), mb.targets, temperature=cfg.temperature)
    return upge.chunked_token_logprobs(hidden, model.unembedding(), mb.targets, chunk_size=cfg.logprob_chunk,
                                       temperature=cfg.temperature)

  def _denominators(self, batch: MicroBatches, advantages: Array) -> dict[str, Array]:
    """Batch-wide denominators of every term (they depend on masks only, so log-probs are zeros)."""
    def one(mb, adv):
      zeros = jnp.zeros(mb.response_mask.shape, jnp.float32)
      x = self._row_inputs(zeros, zeros, mb, adv, jnp.asarray(True), batch.num_questions)
      terms, _ = objective.micro_batch_terms(self.loss_config, x)
      return {k: t.denom for k, t in terms.items()}
    per_micro = jax.vmap(one)(_micro_fields(batch), advantages)
    return {k: v.sum() for k, v in per_micro.items()}

  def _micro_loss(self, params, prefix, mb, advantages, has_old_logp, num_questions, denominators, prefix_mask,
                  packed_tokens=None):
    cfg = self.loss_config
    logp, entropy = self._policy_logprobs(params, prefix, prefix_mask, mb, packed_tokens)
    x = self._row_inputs(logp, entropy, mb, advantages, has_old_logp, num_questions)
    # Σ H over response tokens (a metric, every row, no gradient), whatever the bonus coefficient.
    entropy_sum = jnp.where(mb.response_mask, jax.lax.stop_gradient(entropy), 0.0).sum()
    if cfg.mode is LossMode.OFFICIAL:
      blocks = cfg.official_ranks

      def block_loss(xb):
        terms, metrics = objective.micro_batch_terms(cfg, RowInputs(*xb, num_questions=num_questions))
        return objective.combine_official(terms), {k: upge.finalize(t) for k, t in terms.items()}, metrics

      split = [_split_rows(v, blocks) for v in x[:-1]]
      losses, values, metrics = jax.vmap(block_loss)(split)
      # The official run averages gradients over its ranks: each block is one rank's micro-batch.
      return losses.mean(), (jax.tree.map(jnp.mean, values), jax.tree.map(jnp.mean, metrics), entropy_sum)
    terms, metrics = objective.micro_batch_terms(cfg, x)
    values = {k: t.total / jnp.maximum(denominators[k], 1.0) for k, t in terms.items()}
    return objective.combine_global(terms, denominators), (values, metrics, entropy_sum)

  def _loss_and_grads(self, params: dict, batch: MicroBatches) -> tuple[Array, dict, dict]:
    cfg = self.loss_config
    m, bm = batch.row_valid.shape
    if cfg.mode is LossMode.OFFICIAL and bm % cfg.official_ranks:
      raise ValueError(f"LossConfig.official_ranks ({cfg.official_ranks}) must divide the rows per "
                       f"micro-batch ({bm})")
    advantages = objective.compute_advantages(
        cfg.advantage, given=batch.advantages.reshape(-1), rewards=batch.rewards.reshape(-1),
        group_ids=batch.group_ids.reshape(-1), row_valid=batch.row_valid.reshape(-1)).reshape(m, bm)
    denominators = None if cfg.mode is LossMode.OFFICIAL else self._denominators(batch, advantages)
    # Shared prompts: every prompt of the step through every layer once, here; the micro-batches take
    # the result as an input and return its cotangent, pulled back through `prefix_vjp` after the scan.
    prefix, prefix_vjp, prefix_mask = None, None, None
    if batch.prefix_tokens is not None:
      prefix_tokens, prefix_mask = step_prefixes(batch)
      prefix, prefix_vjp = jax.vjp(lambda p: prefix_states(self._model(p), prefix_tokens, prefix_mask), params)
    grads_at = lambda packed_tokens: jax.value_and_grad(
        functools.partial(self._micro_loss, packed_tokens=packed_tokens), argnums=(0, 1), has_aux=True)
    grad_fn = response_packing.by_capacity(grads_at, response_packing.batch_capacities(
        batch, self.response_granules))
    f32_zeros = lambda tree: jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), tree)
    accumulate = lambda acc, g: jax.tree.map(lambda a, b: a + b.astype(jnp.float32), acc, g)

    def body(carry, xs):
      grads_acc, prefix_acc, loss_acc, values_acc, metrics_acc, entropy_acc = carry
      mb, adv = xs
      (loss, (values, metrics, entropy_sum)), (grads, prefix_grads) = grad_fn(
          params, prefix, mb, adv, batch.has_old_logp, batch.num_questions, denominators, prefix_mask)
      return (accumulate(grads_acc, grads), accumulate(prefix_acc, prefix_grads), loss_acc + loss,
              jax.tree.map(jnp.add, values_acc, values), jax.tree.map(jnp.add, metrics_acc, metrics),
              entropy_acc + entropy_sum), None

    # Shapes of the per-term values/metrics, for zero-initialised carries.
    _, (values0, metrics0, _) = jax.eval_shape(self._micro_loss, params, prefix, _index_micro(batch, 0),
                                               advantages[0], batch.has_old_logp, batch.num_questions,
                                               denominators, prefix_mask)
    zeros = lambda tree: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), tree)
    init = (f32_zeros(params), f32_zeros(prefix), jnp.zeros((), jnp.float32), zeros(values0), zeros(metrics0),
            jnp.zeros((), jnp.float32))
    (grads, prefix_grads, loss, values, metrics, entropy_sum), _ = jax.lax.scan(
        body, init, (_micro_fields(batch), advantages))
    if prefix_vjp is not None:
      (through_prefix,) = prefix_vjp(jax.tree.map(lambda g, x: g.astype(x.dtype), prefix_grads, prefix))
      grads = accumulate(grads, through_prefix)
    out = {f"loss/{k}": v for k, v in values.items()}
    out |= {f"algo/{k}": v / m for k, v in metrics.items()}  # mean over micro-batches
    out["loss/total"] = loss
    tokens = batch.response_mask.sum()
    # Token-mean entropy of π_θ over every response token of the batch (RL and demonstration rows).
    out["policy/entropy"] = entropy_sum / jnp.maximum(tokens, 1).astype(entropy_sum.dtype)
    out["batch/response_tokens"] = tokens
    out["batch/demo_rows"] = (batch.is_demo & batch.row_valid).sum()
    out["batch/rows"] = batch.row_valid.sum()
    return loss, grads, out

  def _update(self, params, opt_state, step, batch):
    loss, grads, metrics = self._loss_and_grads(params, batch)
    # The update's real tokens (prompt + response, padding excluded: what the loop counts for its
    # token budget) drive a token-clock lr schedule (OptimConfig.schedule_unit=TOKENS).
    updates, new_opt_state = self.optimizer.update(grads, opt_state, params,
                                                   num_tokens=real_tokens(batch, jnp))
    new_params = optim_lib.apply_updates_unless_skipped(params, updates, new_opt_state)
    metrics = metrics | {
        "optim/grad_norm": new_opt_state.last_grad_norm,
        "optim/skipped": new_opt_state.last_skipped,
        "optim/num_skipped": new_opt_state.num_skipped,
    }
    return new_params, new_opt_state, step + 1, metrics


def policy_hidden(model, mb: MicroBatches, prefix: PrefixStates | None = None,
                  prefix_mask: Array | None = None, *, packed_tokens: int | None = None) -> Array:
  """[Bm, T, D] final-norm hidden states, slot t predicting `mb.targets[:, t]`, in either layout.

  Plain rows run the model's causal forward. Shared-prompt rows attend to their prompts' states,
  `prefix` = `prefix_states(model, *step_prefixes(batch))` computed once for the whole batch, with
  `prefix_mask` its [M * Gp, P] mask (`hpt_jax.models.shared_prefix`); `packed_tokens` C runs their
  per-token work on the real response tokens packed into C rows (`suffix_hidden`).
  """
  if mb.prefix_tokens is None:
    if packed_tokens is not None:
      raise ValueError("policy_hidden: packed_tokens packs the shared-prompt layout's responses; this "
                       "micro-batch has plain rows")
    hidden, _ = model(mb.tokens, positions=mb.positions, attention_mask=mb.attention_mask)
    return hidden
  if prefix is None or prefix_mask is None:
    raise ValueError("policy_hidden: a shared-prompt micro-batch needs the batch's prefix states and mask")
  return suffix_hidden(model, prefix, prefix_mask=prefix_mask, prefix_index=mb.prefix_index,
                       suffix_tokens=mb.tokens, suffix_mask=mb.attention_mask, packed_tokens=packed_tokens)


def _gather_vocab_tables(params: dict) -> dict:
  """The embedding (and an untied lm_head) all-gathered over the `embed` axis, vocab split kept.

  Under FSDP the table [V, D] is split over vocab (tensor) × embed (fsdp). A row gather from it
  would come out split over D on fsdp, and the next op wants rows split over data × fsdp: XLA has
  no cheap path between the two and warns "involuntary full rematerialization" (it replicates the
  gathered activations). With D whole, the gather is a masked local lookup plus an all-reduce over
  tensor, and the unembedding matmul [.., D] @ [D, V] contracts a local D. FSDP all-gathers every
  other weight before use in the same way. No-op without a mesh.
  """
  params = dict(params)
  embed = dict(params["embed_tokens"])
  embed["embedding"] = sharding_lib.constrain(embed["embedding"], ("vocab", None))
  params["embed_tokens"] = embed
  if params.get("lm_head") is not None:
    head = dict(params["lm_head"])
    head["kernel"] = sharding_lib.constrain(head["kernel"], (None, "vocab"))
    params["lm_head"] = head
  return params


class _NullContext:
  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False


_SCALAR_FIELDS = ("has_old_logp", "num_questions")


def _micro_fields(batch: MicroBatches) -> MicroBatches:
  """The batch with scalar fields broadcast to [M] so the whole NamedTuple can be scanned/vmapped."""
  m = batch.row_valid.shape[0]
  return batch._replace(**{f: jnp.broadcast_to(getattr(batch, f), (m,)) for f in _SCALAR_FIELDS})


def _index_micro(batch: MicroBatches, i: int) -> MicroBatches:
  return jax.tree.map(lambda x: x[i], _micro_fields(batch))


def make_train_step(model_config: ModelConfig, *, loss: LossConfig, optimizer: optax.GradientTransformation,
                    mesh: Mesh | None = None, response_granules: int = 0) -> TrainStep:
  return TrainStep(model_config, loss=loss, optimizer=optimizer, mesh=mesh, response_granules=response_granules)


def metrics_to_host(metrics: dict[str, Any]) -> dict[str, float]:
  """Device scalars -> Python floats (call outside jit, after the step)."""
  return {k: float(v) for k, v in jax.device_get(metrics).items()}
