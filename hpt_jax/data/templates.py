"""Prompt templates: the model's own chat template (Qwen) or the Llama "zero" template (PAPER.md §3).

* CHAT: `tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True)`,
  then tokenised without extra special tokens (verl's RLHFDataset). With Qwen2.5-Math's template and no
  system message this renders
  `<|im_start|>system\\nPlease reason step by step, and put your final answer within \\boxed{}.<|im_end|>\\n
  <|im_start|>user\\n{q}<|im_end|>\\n<|im_start|>assistant\\n` (one string, no line break after `\\n`).
* LLAMA_ZERO (HPT's `data.zero=True`): `"Question:\\n{q}{suffix}\\nAnswer:\\nLet's think step by step."`
  with the boxed-answer suffix, tokenised WITH the tokenizer's special tokens (Llama adds BOS).

`qwen_chat_template(system_prompt=...)` writes a Qwen-style jinja chat template whose default system
prompt is configurable, so the built-in task can use a short one while the Qwen2.5-Math default renders
exactly the string above.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence

QWEN_MATH_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
LLAMA_ZERO_SUFFIX = "\nPlease reason step by step, and put your final answer within \\boxed{}."
IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"


class PromptTemplate(enum.Enum):
  """How a question becomes prompt tokens (see module docstring)."""
  CHAT = "chat"
  LLAMA_ZERO = "llama_zero"


@dataclasses.dataclass(frozen=True)
class Message:
  role: str  # "system" | "user" | "assistant"
  content: str


def _jinja_literal(text: str) -> str:
  """`text` as a single-quoted jinja string literal (jinja unescapes backslash sequences in literals)."""
  escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
  return "'" + escaped + "'"


def qwen_chat_template(*, system_prompt: str | None = QWEN_MATH_SYSTEM_PROMPT) -> str:
  """A Qwen2.5-style ChatML jinja template.

  Args:
    system_prompt: the system block used when the conversation has no system message of its own
      (Qwen2.5-Math's default by default); None renders no system block at all.

  Returns:
    The jinja source, for `tokenizer.chat_template`.
  """
  default = ""
  if system_prompt is not None:
    default = ("{{- '" + IM_START + "system\\n' + " + _jinja_literal(system_prompt) + " + '" + IM_END
               + "\\n' -}}")
  return (
      "{%- if messages[0]['role'] == 'system' -%}"
      "{{- '" + IM_START + "system\\n' + messages[0]['content'] + '" + IM_END + "\\n' -}}"
      "{%- else -%}" + default + "{%- endif -%}"
      "{%- for message in messages -%}"
      "{%- if not (loop.first and message['role'] == 'system') -%}"
      "{{- '" + IM_START + "' + message['role'] + '\\n' + message['content'] + '" + IM_END + "\\n' -}}"
      "{%- endif -%}"
      "{%- endfor -%}"
      "{%- if add_generation_prompt -%}{{- '" + IM_START + "assistant\\n' -}}{%- endif -%}"
  )


def llama_zero_prompt(question: str) -> str:
  """HPT's Llama zero-shot prompt text (before the tokenizer adds BOS)."""
  return "Question:\n" + question + LLAMA_ZERO_SUFFIX + "\nAnswer:\nLet's think step by step."


def render_text(template: PromptTemplate, tokenizer, messages: Sequence[Message]) -> str:
  """The prompt text for `messages` (the conversation without its dataset system message)."""
  if not messages or messages[-1].role != "user":
    raise ValueError(f"messages must end with a user message, got {[m.role for m in messages]}")
  return _RENDERERS[template](tokenizer, messages)


def adds_special_tokens(template: PromptTemplate) -> bool:
  """Whether the tokenizer's own special tokens (BOS) are added when tokenising the rendered text.

  CHAT: no -- the chat template already wrote every special token. LLAMA_ZERO: yes -- Llama adds BOS.
  """
  return _ADD_SPECIAL[template]


def render_prompt(template: PromptTemplate, tokenizer, messages: Sequence[Message]) -> tuple[str, list[int]]:
  """Renders a prompt and tokenises it.

  Args:
    template: CHAT or LLAMA_ZERO.
    tokenizer: a `transformers` tokenizer (with a chat template for CHAT).
    messages: the conversation without its dataset system message; the last one is the user question.

  Returns:
    (prompt text, token ids).
  """
  text = render_text(template, tokenizer, messages)
  ids = tokenizer(text, add_special_tokens=adds_special_tokens(template))["input_ids"]
  return text, list(ids)


def _render_chat(tokenizer, messages: Sequence[Message]) -> str:
  chat = [{"role": m.role, "content": m.content} for m in messages]
  return tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)


def _render_llama_zero(tokenizer, messages: Sequence[Message]) -> str:
  del tokenizer  # the zero template is plain text.
  return llama_zero_prompt(messages[-1].content)


_RENDERERS = {PromptTemplate.CHAT: _render_chat, PromptTemplate.LLAMA_ZERO: _render_llama_zero}
_ADD_SPECIAL = {PromptTemplate.CHAT: False, PromptTemplate.LLAMA_ZERO: True}
