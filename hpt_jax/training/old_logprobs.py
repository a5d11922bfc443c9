"""π_old of a step's rollout tokens: the sampler's log-probs, or a teacher-forced recompute.

A step's rows are cut into mini-batches, one optimizer update each. The first mini-batch is exactly
on-policy (the train step uses stop_gradient(log π_θ)); the later ones need log π_old of every
rollout token under the policy the step started from. The sampler recorded log softmax(logits / T)
for each token it drew, with the step's starting parameters, so those are π_old for free — as long
as the sampling-time policy is the training-time one and both compute in float32. When it is not
(the loss takes π_θ at a temperature other than the rollout temperature, the sampler computes in
another dtype), or when the forward passes run in bf16 (cache decoding and teacher forcing then
differ by several percent in probability, measured on an H200), π_old is recomputed: one jitted, sharded, teacher-forced forward pass with the step's starting parameters
over the packed micro-batches, from the same hidden states as the train step (`train_step.policy_hidden`:
plain rows, or each distinct prompt of the batch once in the shared-prompt layout), log-probs in chunks of positions
exactly as the train step takes them (the [B, L, V] logits never exist).

Demonstration rows keep what the router gave them (log π_old = 0, the offline reference π_old ≡ 1).
Letters: M micro-batches, Bm rows each, L positions.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from hpt_jax import upge
from hpt_jax.models import ModelConfig
from hpt_jax.models.shared_prefix import PrefixStates, prefix_states
from hpt_jax.training import mesh as mesh_lib
from hpt_jax.training import response_packing
from hpt_jax.training import state as state_lib
from hpt_jax.training.batching import MicroBatches, step_prefixes
from hpt_jax.training.train_step import policy_hidden
from hpt_jax.typing import Array


class OldLogProbs(enum.Enum):
  """Where the later mini-batches' π_old comes from."""
  # The sampler's while the sampling policy is the training policy and both compute in float32;
  # recomputed otherwise (see `PolicyPair.inexact`).
  AUTO = "auto"
  SAMPLER = "sampler"  # always the sampler's (refused by `config.validate` when the policies differ)
  RECOMPUTE = "recompute"  # always a teacher-forced pass with the step's starting parameters


@dataclasses.dataclass(frozen=True, kw_only=True)
class PolicyPair:
  """What makes the sampling-time policy and the training-time policy the same distribution.

  Attributes:
    sampling_temperature: T of the sampler's recorded log-probs.
    loss_temperature: T at which the loss takes log π_θ.
    sampling_dtype: compute dtype of the sampler's forward pass.
    training_dtype: compute dtype of the train step's forward pass.
  """
  sampling_temperature: float
  loss_temperature: float
  sampling_dtype: str
  training_dtype: str

  def differences(self) -> list[str]:
    """Human-readable reasons the two policies differ (empty when they agree)."""
    out = []
    if self.sampling_temperature != self.loss_temperature:
      out.append(f"sampling temperature {self.sampling_temperature} != loss temperature {self.loss_temperature}")
    if jnp.dtype(self.sampling_dtype) != jnp.dtype(self.training_dtype):
      out.append(f"sampling dtype {self.sampling_dtype} != training dtype {self.training_dtype}")
    return out

  def inexact(self) -> list[str]:
    """Reasons the sampler's log-probs only approximate the train step's, though the policy is the same.

    KV-cache decoding and a teacher-forced pass sum in different orders; in float32 on CPU they agree
    to ~1e-7, but in bf16 they do not (H200, random 8-layer width-1536 model, 32k tokens: |Δ log p|
    mean 0.015, max 0.074, i.e. π_θ/π_old off by up to 7.6 % before any update).
    """
    if jnp.dtype(self.training_dtype) != jnp.float32:
      return [f"training computes in {self.training_dtype}: decoding and teacher forcing disagree"]
    return []


def should_recompute(choice: OldLogProbs, policies: PolicyPair) -> bool:
  """True when π_old must come from a recompute pass (see `OldLogProbs`).

  SAMPLER stays allowed under low-precision compute (`PolicyPair.inexact`): a deliberate trade of
  ratio noise for one forward pass less.

  Raises:
    ValueError: SAMPLER while the policies differ (the ratio π_θ/π_old would mix two distributions).
  """
  reasons = policies.differences()
  if choice is OldLogProbs.SAMPLER and reasons:
    raise ValueError(f"old_logprobs=sampler, but the sampler's log-probs are not the training policy's: "
                     f"{'; '.join(reasons)} (use auto or recompute)")
  return choice is OldLogProbs.RECOMPUTE or (choice is OldLogProbs.AUTO and bool(reasons or policies.inexact()))


def _policy(model_config: ModelConfig, graphdef: nnx.GraphDef, params: dict):
  """The policy with fp32 master `params` cast to the config's compute dtype, as the train step runs it."""
  dtype = jnp.dtype(model_config.dtype)
  if dtype != jnp.float32:
    params = jax.tree.map(lambda p: p.astype(dtype), params)
  return nnx.merge(graphdef, nnx.State(params))


def teacher_forced_logprobs(model_config: ModelConfig, graphdef: nnx.GraphDef, params: dict, mb: MicroBatches,
                            *, temperature: float, logprob_chunk: int | None,
                            prefix: PrefixStates | None = None, prefix_mask: Array | None = None,
                            packed_tokens: int | None = None) -> Array:
  """log π(targets) of one micro-batch, as the train step computes it (no gradient needed).

  Args:
    model_config: the policy's config (its dtype is the compute dtype).
    graphdef: `state.model_graphdef(model_config)`.
    params: fp32 master parameters (pure dict); cast to the compute dtype here, like the step does.
    mb: one micro-batch of either layout (fields without the leading M): `tokens`, `positions`,
      `attention_mask`, `targets` [Bm, L] (the shared layout: [Bm, R] responses, plus
      `prefix_tokens` / `prefix_mask` [Gp, P] and `prefix_index` [Bm] into the batch's prefix rows).
    temperature: logits are divided by it.
    logprob_chunk: positions per chunk of the log-softmax from hidden states (None: full logits).
    prefix, prefix_mask: shared layout only: the batch's `prefix_states` and their [M * Gp, P] mask.
    packed_tokens: shared layout only: the responses' per-token work on their real tokens packed into
      this many rows (`shared_prefix.suffix_hidden`); None runs every slot.

  Returns:
    [Bm, L] float32 log-probs (meaningful where the response mask is True).
  """
  model = _policy(model_config, graphdef, params)
  hidden = policy_hidden(model, mb, prefix, prefix_mask, packed_tokens=packed_tokens)
  if logprob_chunk is None:
    logp, _ = upge.token_logprobs(model.logits(hidden), mb.targets, temperature=temperature)
  else:
    logp, _ = upge.chunked_token_logprobs(hidden, model.unembedding(), mb.targets, chunk_size=logprob_chunk,
                                          temperature=temperature)
  return logp.astype(jnp.float32)


class Recompute:
  """`recompute(params, batch) -> batch` with π_old of every rollout token from a teacher-forced pass.

  Compiled once per batch layout (plain rows / shared prompts) and shape (per length bucket,
  micro-batch count and prefix slots); the micro-batches run one after the other (`lax.map`), so the
  peak is one micro-batch's activations, as in the train step.

  Args:
    model_config: the policy's config.
    temperature: the loss temperature (π_old must be taken where π_θ is).
    logprob_chunk: the train step's chunk size (`LossConfig.logprob_chunk`).
    mesh: the training mesh (parameters by the rules table, rows over data × fsdp), or None.
    response_granules: as the train step's (`training.response_packing`): shared-prompt micro-batches
      run on their real response tokens only; 0 runs every slot.
  """

  def __init__(self, model_config: ModelConfig, *, temperature: float, logprob_chunk: int | None,
               mesh: Mesh | None = None, response_granules: int = 0):
    if temperature <= 0:
      raise ValueError(f"Recompute: temperature must be > 0, got {temperature}")
    response_packing.check_granules(response_granules, mesh, owner="Recompute")
    self.response_granules = response_granules
    self.model_config = model_config
    self.temperature = temperature
    self.logprob_chunk = logprob_chunk
    self.mesh = mesh
    self.graphdef = state_lib.model_graphdef(model_config)
    # Jitted per batch layout (plain / shared-prompt): the layouts are different pytrees.
    self._jitted: dict[bool, Any] = {}
    if mesh is not None:
      abstract_state, _ = state_lib.abstract_params(model_config)
      self._p_shard = mesh_lib.param_shardings(abstract_state, mesh)

  def _function(self, batch: MicroBatches) -> Any:
    shared = batch.prefix_tokens is not None
    if shared not in self._jitted:
      if self.mesh is None:
        self._jitted[shared] = jax.jit(self._recompute)
      else:
        b_shard = mesh_lib.batch_shardings(batch, self.mesh)
        self._jitted[shared] = jax.jit(self._recompute, in_shardings=(self._p_shard, b_shard),
                                       out_shardings=b_shard)
    return self._jitted[shared]

  def __call__(self, params: dict, batch: MicroBatches) -> MicroBatches:
    """`batch` (placed as the train step takes it) with `old_logp` recomputed on rollout rows and
    `has_old_logp` set."""
    if self.mesh is None:
      return self._function(batch)(params, batch)
    with jax.set_mesh(self.mesh):
      return self._function(batch)(params, batch)

  def _recompute(self, params: dict, batch: MicroBatches) -> MicroBatches:
    prefix, prefix_mask = None, None
    if batch.prefix_tokens is not None:  # every prompt of the batch once, as the train step does
      prefix_tokens, prefix_mask = step_prefixes(batch)
      prefix = prefix_states(_policy(self.model_config, self.graphdef, params), prefix_tokens, prefix_mask)

    def logp_at(packed_tokens):
      return lambda params, prefix, mb: teacher_forced_logprobs(
          self.model_config, self.graphdef, params, mb, temperature=self.temperature,
          logprob_chunk=self.logprob_chunk, prefix=prefix, prefix_mask=prefix_mask, packed_tokens=packed_tokens)

    logp_fn = response_packing.by_capacity(logp_at, response_packing.batch_capacities(
        batch, self.response_granules))
    one = lambda mb: logp_fn(params, prefix, mb)

    # Every [M, ...] field, one micro-batch at a time (the scalars have no micro-batch axis).
    logp = jax.lax.map(one, batch._replace(has_old_logp=None, num_questions=None))
    rollout = batch.response_mask & ~batch.is_demo[..., None]
    old_logp = jnp.where(rollout, jax.lax.stop_gradient(logp), batch.old_logp)
    return batch._replace(old_logp=old_logp, has_old_logp=jnp.ones_like(batch.has_old_logp))
