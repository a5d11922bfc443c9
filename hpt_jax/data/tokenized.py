"""Turns loaded Examples into the plain container of token ids the training loop consumes.

Prompts are rendered through a `PromptTemplate`; a prompt longer than `max_prompt_length` tokens is
dropped (HPT filters them out, PAPER.md §3). A demonstration is tokenised without special tokens, gets
EOS appended and is cut at `max_response_length` (HPT's `generate_off_sequences`: append EOS, then
truncate, so a truncated demonstration has no EOS). Both counts are logged and kept in `stats`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np

from hpt_jax.data.openr1 import Example
from hpt_jax.data.templates import PromptTemplate, adds_special_tokens, render_text

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TokenizedDataset:
  """N examples as token-id arrays (ragged), plus what grading and logging need.

  Attributes:
    prompt_tokens: N int32 arrays, [P_i] each.
    target_tokens: N int32 arrays, [T_i] each (EOS last unless truncated); empty when no target.
    ground_truths: N ground truths (str or tuple of str), for the verifier.
    ids: N row ids.
    levels: [N] int32 difficulty level, -1 when unknown.
    stats: counts from the build (`dropped_long_prompts`, `truncated_targets`, `missing_targets`).
  """
  prompt_tokens: tuple[np.ndarray, ...]
  target_tokens: tuple[np.ndarray, ...]
  ground_truths: tuple[str | tuple[str, ...], ...]
  ids: tuple[str, ...]
  levels: np.ndarray
  stats: dict[str, int] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    n = len(self.prompt_tokens)
    for name in ("target_tokens", "ground_truths", "ids", "levels"):
      if len(getattr(self, name)) != n:
        raise ValueError(f"TokenizedDataset.{name} has {len(getattr(self, name))} entries, expected {n}")

  def __len__(self) -> int:
    return len(self.prompt_tokens)

  def prompts(self, indices: Sequence[int], *, pad_id: int, length: int | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded prompt batch (generation continues from the right edge).

    Returns:
      tokens: [B, P] int32 with P = `length` or the longest prompt; mask: [B, P] bool, True = real.
    """
    return _pad([self.prompt_tokens[i] for i in indices], pad_id=pad_id, length=length, left=True)

  def targets(self, indices: Sequence[int], *, pad_id: int, length: int | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded demonstration batch: tokens [B, T] int32, mask [B, T] bool."""
    return _pad([self.target_tokens[i] for i in indices], pad_id=pad_id, length=length, left=False)


def _pad(rows: list[np.ndarray], *, pad_id: int, length: int | None, left: bool
         ) -> tuple[np.ndarray, np.ndarray]:
  longest = max((len(r) for r in rows), default=0)
  width = longest if length is None else length
  if longest > width:
    raise ValueError(f"a row has {longest} tokens, more than the requested length {width}")
  tokens = np.full((len(rows), width), pad_id, dtype=np.int32)
  mask = np.zeros((len(rows), width), dtype=bool)
  for b, row in enumerate(rows):
    span = slice(width - len(row), width) if left else slice(0, len(row))
    tokens[b, span] = row
    mask[b, span] = True
  return tokens, mask


def tokenize_examples(examples: Sequence[Example], tokenizer, *, template: PromptTemplate,
                      max_prompt_length: int, max_response_length: int) -> TokenizedDataset:
  """Renders, tokenises, filters and truncates (see module docstring).

  Args:
    examples: from `openr1.load_openr1`.
    tokenizer: a `transformers` tokenizer; its `eos_token_id` ends every demonstration.
    template: how prompts are rendered.
    max_prompt_length: prompts with more tokens are dropped.
    max_response_length: demonstrations (EOS included) are cut to this many tokens.
  """
  if max_prompt_length < 1 or max_response_length < 1:
    raise ValueError(f"max_prompt_length ({max_prompt_length}) and max_response_length "
                     f"({max_response_length}) must be >= 1")
  eos = tokenizer.eos_token_id
  if eos is None:
    raise ValueError("the tokenizer has no eos_token_id; demonstrations need one appended")
  texts = [render_text(template, tokenizer, ex.messages) for ex in examples]
  # One batched call each: the Rust tokenizer is much faster on a list than row by row.
  prompt_ids = tokenizer(texts, add_special_tokens=adds_special_tokens(template))["input_ids"] if texts else []
  with_target = [i for i, ex in enumerate(examples) if ex.target is not None]
  target_ids = dict(zip(with_target, tokenizer([examples[i].target for i in with_target],
                                               add_special_tokens=False)["input_ids"])) if with_target else {}
  prompts, targets, truths, ids, levels = [], [], [], [], []
  dropped = truncated = missing = 0
  for i, ex in enumerate(examples):
    if len(prompt_ids[i]) > max_prompt_length:
      dropped += 1
      continue
    if ex.target is None:
      missing += 1
      target = []
    else:
      target = list(target_ids[i]) + [eos]
      if len(target) > max_response_length:
        truncated += 1
        target = target[:max_response_length]
    prompts.append(np.asarray(prompt_ids[i], dtype=np.int32))
    targets.append(np.asarray(target, dtype=np.int32))
    truths.append(ex.ground_truth)
    ids.append(ex.id)
    levels.append(ex.level)
  stats = {"dropped_long_prompts": dropped, "truncated_targets": truncated, "missing_targets": missing}
  if dropped or truncated:
    log.info("tokenize: dropped %d prompts longer than %d tokens; truncated %d demonstrations at %d tokens",
             dropped, max_prompt_length, truncated, max_response_length)
  return TokenizedDataset(prompt_tokens=tuple(prompts), target_tokens=tuple(targets),
                          ground_truths=tuple(truths), ids=tuple(ids),
                          levels=np.asarray(levels, dtype=np.int32), stats=stats)
