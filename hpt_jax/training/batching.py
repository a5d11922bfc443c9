"""Host-side batch construction: RL and demonstration rows packed into static-shape micro-batches.

A training batch is a list of rows (`Rows`): on-policy rollouts (RL rows) and demonstration rows,
in any mix. `pack` lays them out as `MicroBatches`, NumPy arrays of shape [M, Bm, L]:

  * every row is `prompt ++ response`, right-padded to L, the smallest configured length bucket that
    holds the longest row (one L per step, so a step compiles once per bucket and micro-batch count);
  * `targets[t]` is the token at t+1 and `response_mask[t]` is True where that target is a response
    token, so the log-prob at t from hidden state t is the loss term of target t;
  * rows fill micro-batches of `rows_per_micro_batch` rows in order; the micro-batch count is
    rounded up to `micro_batch_multiple`, and the holes are padding rows with every mask False and
    weight 0, so they add exactly nothing;
  * per-row fields say which loss applies: `is_demo`, `rl_weight`, `sft_weight`, `advantages`,
    `group_ids`, and `group_size` / `num_questions` for the paper-mode per-question average.

With `PackConfig(shared_prompts=SharedPrompts(...))` the rows are laid out for the shared-prompt
forward (`hpt_jax.models.shared_prefix`): every micro-batch keeps the same rows, but each DISTINCT
prompt of the whole batch is stored once, in one of the M·Gp prefix slots of `prefix_tokens` [M, Gp, P]
(Gp = ceil(distinct prompts / M), rounded up), and the per-row arrays hold the responses only,
[M, Bm, R] (`tokens[t]` = `targets[t]` = response token t, `positions` continue the prompt's,
`response_mask` = `attention_mask` = real response slots), with `prefix_index` [M, Bm] naming
each row's prefix slot in the flattened [M·Gp] rows (`step_prefixes`): the train step runs every
prompt once per step, whichever micro-batches its rows are in. The loss sees the same log-probs in
another column order, so every objective is unchanged, except one that takes its constant T from the
padded width (`width=None`): that width is R here, the prompt + response bucket L in the plain layout. `real_tokens` counts prompt + response tokens
per row in both layouts.

Everything is deterministic NumPy; nothing here touches a device.
Letters: B rows, M micro-batches, Bm rows per micro-batch, L padded length; shared layout: M·Gp prefix
slots, P prefix length, R response length.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np


@dataclasses.dataclass(frozen=True)
class Rows:
  """A flat list of B rows before packing.

  Attributes:
    prompts: B int arrays [P_i], prompt token ids.
    responses: B int arrays [T_i], response token ids (rollout or demonstration, EOS included).
    old_logp: None (on-policy: the step uses stop_gradient of the current log-probs) or B float
      arrays [T_i], log π_old of each response token.
    is_demo: [B] bool, demonstration row.
    group_ids: [B] int >= 0, advantage group of each row.
    question_index: [B] int, index of the row's question in the batch (paper-mode averaging).
    rewards: [B] float, outcome reward.
    rl_weight: [B] float >= 0, weight of the policy-gradient term (α on RL rows, β·w_off on demos).
    sft_weight: [B] float >= 0, weight of the NLL term (β·w_sft on demonstration rows, else 0).
  """

  prompts: Sequence[np.ndarray]
  responses: Sequence[np.ndarray]
  old_logp: Sequence[np.ndarray] | None
  is_demo: np.ndarray
  group_ids: np.ndarray
  question_index: np.ndarray
  rewards: np.ndarray
  rl_weight: np.ndarray
  sft_weight: np.ndarray

  def __post_init__(self):
    b = len(self.prompts)
    if len(self.responses) != b:
      raise ValueError(f"Rows.responses has {len(self.responses)} rows, prompts has {b}")
    for name in ("is_demo", "group_ids", "question_index", "rewards", "rl_weight", "sft_weight"):
      v = np.asarray(getattr(self, name))
      if v.shape != (b,):
        raise ValueError(f"Rows.{name} must have shape ({b},), got {v.shape}")
    for i, resp in enumerate(self.responses):
      if np.asarray(resp).ndim != 1 or len(resp) == 0:
        raise ValueError(f"Rows.responses[{i}] must be a non-empty 1-D array, got shape {np.shape(resp)}")
    if self.old_logp is not None:
      if len(self.old_logp) != b:
        raise ValueError(f"Rows.old_logp has {len(self.old_logp)} rows, prompts has {b}")
      for i, (lp, resp) in enumerate(zip(self.old_logp, self.responses)):
        if np.shape(lp) != np.shape(resp):
          raise ValueError(f"Rows.old_logp[{i}] has shape {np.shape(lp)}, response has {np.shape(resp)}")
    for name in ("rl_weight", "sft_weight"):
      v = np.asarray(getattr(self, name), np.float64)
      if np.any(~np.isfinite(v) | (v < 0)):
        raise ValueError(f"Rows.{name} must be finite and >= 0, bad rows {np.flatnonzero(~(v >= 0)).tolist()}")
    if np.any(np.asarray(self.group_ids) < 0):
      raise ValueError(f"Rows.group_ids must be >= 0, bad rows {np.flatnonzero(np.asarray(self.group_ids) < 0).tolist()}")

  @property
  def num_rows(self) -> int:
    return len(self.prompts)

  def lengths(self) -> np.ndarray:
    """[B] int, prompt + response length of each row."""
    return np.array([len(p) + len(r) for p, r in zip(self.prompts, self.responses)], np.int64)


def _check_buckets(name: str, buckets: Sequence[int], minimum: int) -> None:
  if not buckets or list(buckets) != sorted(set(buckets)) or buckets[0] < minimum:
    raise ValueError(f"{name} must be non-empty, strictly increasing and >= {minimum}, got {buckets}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SharedPrompts:
  """Static shapes of the shared-prompt layout.

  Attributes:
    prompt_buckets: increasing prefix lengths P to choose from (the longest prompt of the batch).
    response_buckets: increasing response lengths R to choose from (the longest response).
    prefix_slot_multiple: Gp, the prefix slots per micro-batch row of `prefix_tokens`, is the batch's
      distinct prompts over M, rounded up to a multiple of this (a multiple of the mesh's
      batch-sharding size under a mesh; a larger one means fewer distinct shapes, so fewer compiles).
  """

  prompt_buckets: tuple[int, ...]
  response_buckets: tuple[int, ...]
  prefix_slot_multiple: int = 1

  def __post_init__(self):
    for name in ("prompt_buckets", "response_buckets"):
      _check_buckets(f"SharedPrompts.{name}", getattr(self, name), 1)
    if self.prefix_slot_multiple < 1:
      raise ValueError(f"SharedPrompts.prefix_slot_multiple must be >= 1, got {self.prefix_slot_multiple}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PackConfig:
  """Static-shape layout of a batch.

  Attributes:
    length_buckets: increasing padded lengths L to choose from (a few, to bound recompiles).
    rows_per_micro_batch: Bm; must divide by the mesh's batch-sharding size (data × fsdp).
    micro_batch_multiple: the micro-batch count M is rounded up to a multiple of this (static
      M across steps: set it to the largest M a step can need).
    pad_id: token id written into padding positions (never attended, never a target).
    shared_prompts: lay rows out for the shared-prompt forward (see the module docstring); None: the
      plain `prompt ++ response` rows of a `length_buckets` length.
  """

  length_buckets: tuple[int, ...]
  rows_per_micro_batch: int
  micro_batch_multiple: int = 1
  pad_id: int = 0
  shared_prompts: SharedPrompts | None = None

  def __post_init__(self):
    _check_buckets("PackConfig.length_buckets", self.length_buckets, 2)
    if self.rows_per_micro_batch < 1 or self.micro_batch_multiple < 1:
      raise ValueError(f"PackConfig.rows_per_micro_batch ({self.rows_per_micro_batch}) and "
                       f"micro_batch_multiple ({self.micro_batch_multiple}) must be >= 1")


class MicroBatches(NamedTuple):
  """Packed batch; every array has leading [M, Bm]. A pytree the train step scans over."""

  tokens: np.ndarray  # int32 [M, Bm, L], prompt ++ response, right-padded
  positions: np.ndarray  # int32 [M, Bm, L], 0..len-1 then 0 on padding
  attention_mask: np.ndarray  # bool [M, Bm, L], True on real tokens
  targets: np.ndarray  # int32 [M, Bm, L], tokens shifted left by one (pad at the end)
  response_mask: np.ndarray  # bool [M, Bm, L], target t is a response token
  old_logp: np.ndarray  # float32 [M, Bm, L], log π_old of target t (0 off the response)
  has_old_logp: np.ndarray  # bool [], False: on-policy, use stop_gradient(logp)
  is_demo: np.ndarray  # bool [M, Bm]
  row_valid: np.ndarray  # bool [M, Bm], False on padding rows
  advantages: np.ndarray  # float32 [M, Bm]
  rewards: np.ndarray  # float32 [M, Bm]
  group_ids: np.ndarray  # int32 [M, Bm], renumbered densely 0..G-1 in order of id; -1 on padding
  group_size: np.ndarray  # float32 [M, Bm], rows sharing the row's group (1 on padding)
  question_index: np.ndarray  # int32 [M, Bm], -1 on padding rows
  rl_weight: np.ndarray  # float32 [M, Bm]
  sft_weight: np.ndarray  # float32 [M, Bm]
  num_questions: np.ndarray  # float32 [], distinct questions in the batch (paper-mode average)
  # Shared-prompt layout only (None in the plain layout):
  prefix_tokens: np.ndarray | None = None  # int32 [M, Gp, P], each distinct prompt of the BATCH once, right-padded
  prefix_mask: np.ndarray | None = None  # bool [M, Gp, P], True on real prompt tokens
  # int32 [M, Bm], the row's prompt as an index into the flattened [M * Gp] prefix rows (0 on padding
  # rows); any micro-batch's rows may point at any slot (`step_prefixes`).
  prefix_index: np.ndarray | None = None


def step_prefixes(batch: MicroBatches) -> tuple[Any, Any]:
  """The batch's prefix rows as [M * Gp, P] tokens and mask, which `prefix_index` indexes."""
  flat = lambda x: x.reshape(-1, x.shape[-1])
  return flat(batch.prefix_tokens), flat(batch.prefix_mask)


def real_tokens(batch: MicroBatches, xp=np):
  """Prompt + response tokens of the batch's real rows, in either layout (`xp`: np, or jnp under jit)."""
  count = batch.attention_mask.sum()
  if batch.prefix_mask is None:
    return count
  lengths = batch.prefix_mask.sum(-1).reshape(-1)                        # [M * Gp]
  per_row = lengths[batch.prefix_index]                                   # [M, Bm]
  return count + xp.where(batch.row_valid, per_row, 0).sum()


def choose_bucket(max_length: int, buckets: Sequence[int]) -> int:
  """Smallest bucket >= max_length; raises naming the length if none fits."""
  for b in buckets:
    if b >= max_length:
      return b
  raise ValueError(f"a row of length {max_length} exceeds the largest length bucket {buckets[-1]}")


def pack(rows: Rows, *, config: PackConfig, advantages: np.ndarray | None = None) -> MicroBatches:
  """Packs `rows` into micro-batches.

  Args:
    rows: B rows.
    config: the layout.
    advantages: [B] float, per-row Â, used when the step's estimator is GIVEN (default zeros; the
      other estimators compute Â inside the step from `rewards` and `group_ids`).

  Returns:
    `MicroBatches` with M = ceil(B / Bm) rounded up to `config.micro_batch_multiple`.
  """
  b = rows.num_rows
  if b == 0:
    raise ValueError("rows: cannot pack an empty batch")
  advantages = np.zeros((b,)) if advantages is None else np.asarray(advantages, np.float64)
  if advantages.shape != (b,):
    raise ValueError(f"advantages must have shape ({b},), got {advantages.shape}")
  if not np.all(np.isfinite(advantages)):
    raise ValueError(f"advantages must be finite, bad rows {np.flatnonzero(~np.isfinite(advantages)).tolist()}")
  short = [i for i, pr in enumerate(rows.prompts) if len(pr) < 1]
  if short:
    raise ValueError(f"rows.prompts: rows {short} have an empty prompt; the first response token is "
                     "predicted from the last prompt token, so every row needs one")
  if config.shared_prompts is not None:
    return _pack_shared(rows, config, advantages)
  lengths = rows.lengths()
  seq_len = choose_bucket(int(lengths.max()), config.length_buckets)
  bm = config.rows_per_micro_batch
  m = _micro_batch_count(b, config)
  n_slots = m * bm

  tokens = np.full((n_slots, seq_len), config.pad_id, np.int32)
  positions = np.zeros((n_slots, seq_len), np.int32)
  attention = np.zeros((n_slots, seq_len), bool)
  targets = np.full((n_slots, seq_len), config.pad_id, np.int32)
  resp_mask = np.zeros((n_slots, seq_len), bool)
  old_logp = np.zeros((n_slots, seq_len), np.float32)
  for i, (prompt, resp) in enumerate(zip(rows.prompts, rows.responses)):
    p, t = len(prompt), len(resp)
    tokens[i, :p] = prompt
    tokens[i, p:p + t] = resp
    positions[i, :p + t] = np.arange(p + t)
    attention[i, :p + t] = True
    targets[i, :p + t - 1] = tokens[i, 1:p + t]
    # Target t is response token (t + 1 - p); the first response token is predicted at p - 1.
    resp_mask[i, p - 1:p + t - 1] = True
    if rows.old_logp is not None:
      old_logp[i, p - 1:p + t - 1] = rows.old_logp[i]

  shape3 = (m, bm, seq_len)
  return _with_row_fields(
      rows, advantages, m=m, bm=bm,
      tokens=tokens.reshape(shape3),
      positions=positions.reshape(shape3),
      attention_mask=attention.reshape(shape3),
      targets=targets.reshape(shape3),
      response_mask=resp_mask.reshape(shape3),
      old_logp=old_logp.reshape(shape3))


def _micro_batch_count(b: int, config: PackConfig) -> int:
  m = -(-b // config.rows_per_micro_batch)
  return -(-m // config.micro_batch_multiple) * config.micro_batch_multiple


def _pack_shared(rows: Rows, config: PackConfig, advantages: np.ndarray) -> MicroBatches:
  """`pack` in the shared-prompt layout (module docstring): same rows in the same micro-batches."""
  layout = config.shared_prompts
  b, bm = rows.num_rows, config.rows_per_micro_batch
  m = _micro_batch_count(b, config)
  prompt_len = choose_bucket(max(len(p) for p in rows.prompts), layout.prompt_buckets)
  resp_len = choose_bucket(max(len(r) for r in rows.responses), layout.response_buckets)
  # The batch's distinct prompts, in order of first appearance, each in one slot of the flattened
  # [M * Gp] prefix rows (slot s at [s // Gp, s % Gp]); rows point at their prompt's slot.
  slots: dict[bytes, int] = {}
  prefix_index = np.zeros((m * bm,), np.int32)
  for i, prompt in enumerate(rows.prompts):
    prefix_index[i] = slots.setdefault(np.asarray(prompt, np.int64).tobytes(), len(slots))
  gp = -(-len(slots) // m)
  gp = -(-gp // layout.prefix_slot_multiple) * layout.prefix_slot_multiple
  prefix_tokens = np.full((m * gp, prompt_len), config.pad_id, np.int32)
  prefix_mask = np.zeros((m * gp, prompt_len), bool)
  for key, slot in slots.items():
    prompt = np.frombuffer(key, np.int64)
    prefix_tokens[slot, :len(prompt)] = prompt
    prefix_mask[slot, :len(prompt)] = True
  prefix_tokens = prefix_tokens.reshape(m, gp, prompt_len)
  prefix_mask = prefix_mask.reshape(m, gp, prompt_len)

  n_slots = m * bm
  tokens = np.full((n_slots, resp_len), config.pad_id, np.int32)
  positions = np.zeros((n_slots, resp_len), np.int32)
  mask = np.zeros((n_slots, resp_len), bool)
  old_logp = np.zeros((n_slots, resp_len), np.float32)
  for i, (prompt, resp) in enumerate(zip(rows.prompts, rows.responses)):
    p, t = len(prompt), len(resp)
    tokens[i, :t] = resp
    positions[i, :t] = p + np.arange(t)
    mask[i, :t] = True
    if rows.old_logp is not None:
      old_logp[i, :t] = rows.old_logp[i]
  shape3 = (m, bm, resp_len)
  tokens = tokens.reshape(shape3)
  mask = mask.reshape(shape3)
  return _with_row_fields(
      rows, advantages, m=m, bm=bm, tokens=tokens, positions=positions.reshape(shape3), attention_mask=mask,
      targets=tokens, response_mask=mask, old_logp=old_logp.reshape(shape3), prefix_tokens=prefix_tokens,
      prefix_mask=prefix_mask, prefix_index=prefix_index.reshape(m, bm))


def _with_row_fields(rows: Rows, advantages: np.ndarray, *, m: int, bm: int, **token_fields) -> MicroBatches:
  """`MicroBatches` from the layout's token arrays plus the per-row fields (padding rows weigh 0)."""
  b = rows.num_rows

  def per_row(values, dtype, fill):
    out = np.full((m * bm,), fill, dtype)
    out[:b] = values
    return out.reshape(m, bm)

  group_ids = np.asarray(rows.group_ids, np.int64)
  _, inverse, counts = np.unique(group_ids, return_inverse=True, return_counts=True)
  question_index = np.asarray(rows.question_index, np.int64)
  return MicroBatches(
      **token_fields,
      has_old_logp=np.asarray(rows.old_logp is not None),
      is_demo=per_row(np.asarray(rows.is_demo, bool), bool, False),
      row_valid=per_row(np.ones(b, bool), bool, False),
      advantages=per_row(advantages, np.float32, 0.0),
      rewards=per_row(np.asarray(rows.rewards), np.float32, 0.0),
      group_ids=per_row(inverse, np.int32, -1),
      group_size=per_row(counts[inverse], np.float32, 1.0),
      question_index=per_row(question_index, np.int32, -1),
      rl_weight=per_row(np.asarray(rows.rl_weight), np.float32, 0.0),
      sft_weight=per_row(np.asarray(rows.sft_weight), np.float32, 0.0),
      num_questions=np.asarray(len(np.unique(question_index)), np.float32),
  )


def token_count(batch: MicroBatches) -> int:
  """Real tokens in the batch (prompt + response per row, either layout), for throughput figures."""
  return int(real_tokens(batch))
