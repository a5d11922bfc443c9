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


# ------------------------------------------------------------------------------ loading without torch

# `transformers.AutoTokenizer` imports torch (about 190 MB of resident memory in a JAX process that
# never uses it). A directory saved by a fast tokenizer holds everything needed in `tokenizer.json`
# (vocabulary, pre-tokenizer, post-processor, added tokens) plus `tokenizer_config.json` (the special
# token names) and the chat template, so such a directory is served by `tokenizers` and `jinja2` alone.
# Classes whose Python code changes encoding (slow tokenizers, add_bos/add_eos overrides that
# transformers splices into the post-processor) go through transformers as before.
_LIGHT_CLASSES = frozenset({"TokenizersBackend", "PreTrainedTokenizerFast"})
_OVERRIDE_KEYS = ("add_bos_token", "add_eos_token", "add_prefix_space")
_SPECIAL_NAMES = ("bos_token", "eos_token", "pad_token", "unk_token")


def _token_content(value) -> str | None:
  # tokenizer_config.json writes a special token as its string or as an AddedToken dict.
  if value is None or isinstance(value, str):
    return value
  if isinstance(value, dict) and isinstance(value.get("content"), str):
    return value["content"]
  raise ValueError(f"tokenizer_config.json: a special token must be a string or an AddedToken dict, got {value!r}")


def _compile_chat_template(source: str):
  """A jinja template compiled the way transformers compiles chat templates (sandboxed, trimmed)."""
  import json  # noqa: PLC0415
  import datetime  # noqa: PLC0415

  import jinja2  # noqa: PLC0415
  import jinja2.ext  # noqa: PLC0415
  from jinja2.sandbox import ImmutableSandboxedEnvironment  # noqa: PLC0415

  def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

  def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Plain json.dumps: jinja's own filter would HTML-escape the text.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

  env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
  env.filters["tojson"] = tojson
  env.globals["raise_exception"] = raise_exception
  env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
  return env.from_string(source)


class LightTokenizer:
  """The part of the `transformers` fast-tokenizer interface this package uses, on `tokenizers` only.

  Encoding, decoding and special tokens come from `tokenizer.json` itself (so they are those of the
  fast tokenizer transformers would build from the same directory); the chat template is rendered with
  the same jinja settings transformers uses. Build it with `load_tokenizer(directory)`.
  """

  def __init__(self, tok: Tokenizer, *, special_tokens: dict[str, str | None], chat_template: str | None,
               clean_up_tokenization_spaces: bool, name_or_path: str):
    self._tok = tok
    self.chat_template = chat_template
    self.name_or_path = name_or_path
    self._clean_up = clean_up_tokenization_spaces
    self._template = None
    for name in _SPECIAL_NAMES:
      content = special_tokens.get(name)
      token_id = None if content is None else tok.token_to_id(content)
      if content is not None and token_id is None:
        raise ValueError(f"tokenizer_config.json: {name} {content!r} is not in tokenizer.json's vocabulary")
      setattr(self, name, content)
      setattr(self, f"{name}_id", token_id)

  def __len__(self) -> int:
    return self._tok.get_vocab_size(with_added_tokens=True)

  def __call__(self, text: str | list[str], *, add_special_tokens: bool = True) -> dict[str, list]:
    """{"input_ids": ids} for one text, or a list of id lists for a list of texts."""
    if isinstance(text, str):
      return {"input_ids": self.encode(text, add_special_tokens=add_special_tokens)}
    encodings = self._tok.encode_batch(list(text), add_special_tokens=add_special_tokens)
    return {"input_ids": [e.ids for e in encodings]}

  def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
    return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

  def decode(self, ids, *, skip_special_tokens: bool = False) -> str:
    text = self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
    return _clean_up_spaces(text) if self._clean_up else text

  def batch_decode(self, sequences, *, skip_special_tokens: bool = False) -> list[str]:
    return [self.decode(s, skip_special_tokens=skip_special_tokens) for s in sequences]

  def convert_tokens_to_ids(self, token: str) -> int | None:
    return self._tok.token_to_id(token)

  def apply_chat_template(self, conversation: list[dict], *, tokenize: bool = True,
                          add_generation_prompt: bool = False):
    """Renders `conversation` with the chat template; token ids (no special tokens added) if `tokenize`."""
    if self.chat_template is None:
      raise ValueError(f"{self.name_or_path}: the tokenizer has no chat template")
    if self._template is None:
      self._template = _compile_chat_template(self.chat_template)
    text = self._template.render(messages=conversation, add_generation_prompt=add_generation_prompt,
                                 **{name: getattr(self, name) for name in _SPECIAL_NAMES})
    return self.encode(text, add_special_tokens=False) if tokenize else text


def _clean_up_spaces(text: str) -> str:
  """transformers' `clean_up_tokenization`: no space before punctuation and English contractions."""
  for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                        (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
    text = text.replace(before, after)
  return text


def load_tokenizer(directory: str | pathlib.Path):
  """The tokenizer saved in `directory`: a `LightTokenizer` when the directory is a plain fast tokenizer
  (no torch import), else `transformers.AutoTokenizer.from_pretrained(directory)`."""
  import json  # noqa: PLC0415

  directory = pathlib.Path(directory)
  config_path, tok_path = directory / "tokenizer_config.json", directory / "tokenizer.json"
  config = json.loads(config_path.read_text()) if config_path.is_file() else None
  if (config is None or not tok_path.is_file() or config.get("tokenizer_class") not in _LIGHT_CLASSES
      or any(k in config for k in _OVERRIDE_KEYS)):
    from transformers import AutoTokenizer  # noqa: PLC0415 -- heavy import, only for other tokenizers.
    return AutoTokenizer.from_pretrained(str(directory))
  template = config.get("chat_template")
  jinja_path = directory / "chat_template.jinja"
  if template is None and jinja_path.is_file():
    template = jinja_path.read_text()
  if not isinstance(template, (str, type(None))):
    # A list of named templates: served by transformers, which knows how to pick one.
    from transformers import AutoTokenizer  # noqa: PLC0415
    return AutoTokenizer.from_pretrained(str(directory))
  return LightTokenizer(
      Tokenizer.from_file(str(tok_path)),
      special_tokens={name: _token_content(config.get(name)) for name in _SPECIAL_NAMES},
      chat_template=template, clean_up_tokenization_spaces=bool(config.get("clean_up_tokenization_spaces", False)),
      name_or_path=str(directory))
