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

Everything is deterministic NumPy; nothing here touches a device.
Letters: B rows, M micro-batches, Bm rows per micro-batch, L padded length.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

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


@dataclasses.dataclass(frozen=True, kw_only=True)
class PackConfig:
  """Static-shape layout of a batch.

  Attributes:
    length_buckets: increasing padded lengths L to choose from (a few, to bound recompiles).
    rows_per_micro_batch: Bm; must divide by the mesh's batch-sharding size (data × fsdp).
    micro_batch_multiple: the micro-batch count M is rounded up to a multiple of this (static
      M across steps: set it to the largest M a step can need).
    pad_id: token id written into padding positions (never attended, never a target).
  """

  length_buckets: tuple[int, ...]
  rows_per_micro_batch: int
  micro_batch_multiple: int = 1
  pad_id: int = 0

  def __post_init__(self):
    if not self.length_buckets or list(self.length_buckets) != sorted(set(self.length_buckets)):
      raise ValueError(f"PackConfig.length_buckets must be non-empty and strictly increasing, got "
                       f"{self.length_buckets}")
    if self.length_buckets[0] < 2:
      raise ValueError(f"PackConfig.length_buckets must be >= 2, got {self.length_buckets}")
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


# Rank of every `MicroBatches` field (3: [M, Bm, L], 2: [M, Bm], 0: scalar), for shardings.
FIELD_NDIMS = MicroBatches(tokens=3, positions=3, attention_mask=3, targets=3, response_mask=3, old_logp=3,
                           has_old_logp=0, is_demo=2, row_valid=2, advantages=2, rewards=2, group_ids=2,
                           group_size=2, question_index=2, rl_weight=2, sft_weight=2, num_questions=0)


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
  lengths = rows.lengths()
  seq_len = choose_bucket(int(lengths.max()), config.length_buckets)
  bm = config.rows_per_micro_batch
  m = -(-b // bm)
  m = -(-m // config.micro_batch_multiple) * config.micro_batch_multiple
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

  def per_row(values, dtype, fill):
    out = np.full((n_slots,), fill, dtype)
    out[:b] = values
    return out.reshape(m, bm)

  group_ids = np.asarray(rows.group_ids, np.int64)
  _, inverse, counts = np.unique(group_ids, return_inverse=True, return_counts=True)
  question_index = np.asarray(rows.question_index, np.int64)
  shape3 = (m, bm, seq_len)
  return MicroBatches(
      tokens=tokens.reshape(shape3),
      positions=positions.reshape(shape3),
      attention_mask=attention.reshape(shape3),
      targets=targets.reshape(shape3),
      response_mask=resp_mask.reshape(shape3),
      old_logp=old_logp.reshape(shape3),
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
  """Real (attended) tokens in the batch, for throughput figures."""
  return int(np.asarray(batch.attention_mask).sum())
