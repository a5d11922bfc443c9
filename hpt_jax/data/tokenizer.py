"""A byte-level BPE tokenizer trained locally with `tokenizers`, saved as a `transformers` directory.

Special tokens (ids 0, 1, 2): `<|endoftext|>` (pad), `<|im_start|>`, `<|im_end|>` (EOS), as in Qwen2.
Digits are always single tokens (split before BPE, as Qwen2's pre-tokenizer does), which is what lets a
tiny model learn column arithmetic. The saved directory carries a Qwen-style chat template
(`templates.qwen_chat_template`) whose default system prompt is configurable, and loads with
`transformers.AutoTokenizer.from_pretrained`.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from hpt_jax.data.templates import ENDOFTEXT, IM_END, IM_START, QWEN_MATH_SYSTEM_PROMPT, qwen_chat_template

SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)
_BYTE_ALPHABET = 256


def train_bpe(texts: Iterable[str], *, vocab_size: int) -> Tokenizer:
  """Trains a byte-level BPE with the special tokens at ids 0..2; total size is at most `vocab_size`."""
  if vocab_size < _BYTE_ALPHABET + len(SPECIAL_TOKENS):
    raise ValueError(f"vocab_size must be >= {_BYTE_ALPHABET + len(SPECIAL_TOKENS)} (bytes + specials), "
                     f"got {vocab_size}")
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Digits(individual_digits=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
  ])
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(texts, trainer=trainer)
  return tok


def save_hf_tokenizer(tok: Tokenizer, directory: str | pathlib.Path, *,
                      system_prompt: str | None = QWEN_MATH_SYSTEM_PROMPT):
  """Wraps `tok` as a `transformers` fast tokenizer with the chat template and saves it.

  Returns:
    The `transformers` tokenizer (as `AutoTokenizer.from_pretrained(directory)` would load it).
  """
  from transformers import AutoTokenizer, PreTrainedTokenizerFast  # noqa: PLC0415 -- heavy import.
  hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=IM_END, pad_token=ENDOFTEXT,
                               additional_special_tokens=[IM_START], model_max_length=1 << 20)
  hf.chat_template = qwen_chat_template(system_prompt=system_prompt)
  hf.save_pretrained(str(directory))
  return AutoTokenizer.from_pretrained(str(directory))


def build_tokenizer(texts: Iterable[str], directory: str | pathlib.Path, *, vocab_size: int = 512,
                    system_prompt: str | None = QWEN_MATH_SYSTEM_PROMPT):
  """`train_bpe` then `save_hf_tokenizer`; the chat template's system prompt is added to the corpus."""
  corpus = list(texts)
  extra = ["system\n", "user\n", "assistant\n"] + ([system_prompt] if system_prompt else [])
  return save_hf_tokenizer(train_bpe(corpus + extra, vocab_size=vocab_size), directory,
                           system_prompt=system_prompt)
