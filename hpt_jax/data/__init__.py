"""Training data: OpenR1-schema loading, prompt templates, token-id containers, a resumable sampler,
and the built-in arithmetic task with its locally trained tokenizer.

Public API:
  load_openr1(path, *, max_bad_fraction, require_target) -> (examples, LoadReport)   BadDataError
  write_openr1(rows, path)
  PromptTemplate (CHAT | LLAMA_ZERO), render_prompt, qwen_chat_template, QWEN_MATH_SYSTEM_PROMPT
  tokenize_examples(examples, tokenizer, *, template, max_prompt_length, max_response_length)
      -> TokenizedDataset (.prompts(idx, pad_id=) left-padded, .targets(idx, pad_id=) right-padded)
  EpochSampler(num_examples=, batch_size=, seed=, process_index=, process_count=), .state_dict(),
      EpochSampler.from_state(state, batch_size=, ...)   (index batches; not the rollout sampler)
  materialize_builtin_task(directory, BuiltinTaskConfig(...)) -> BuiltinTask (paths)
  build_tokenizer(texts, directory, *, vocab_size, system_prompt)
"""

from hpt_jax.data.builtin import BUILTIN_SYSTEM_PROMPT, BuiltinTask, BuiltinTaskConfig, materialize_builtin_task
from hpt_jax.data.openr1 import BadDataError, BadRow, Example, LoadReport, load_openr1, write_openr1
from hpt_jax.data.sampler import EpochSampler, SamplerState
from hpt_jax.data.templates import (
    LLAMA_ZERO_SUFFIX, QWEN_MATH_SYSTEM_PROMPT, Message, PromptTemplate, llama_zero_prompt, qwen_chat_template,
    render_prompt, render_text)
from hpt_jax.data.tokenized import TokenizedDataset, tokenize_examples
from hpt_jax.data.tokenizer import build_tokenizer

__all__ = [
    "BUILTIN_SYSTEM_PROMPT", "BadDataError", "BadRow", "BuiltinTask", "BuiltinTaskConfig", "EpochSampler",
    "Example", "LLAMA_ZERO_SUFFIX", "LoadReport", "Message", "PromptTemplate", "QWEN_MATH_SYSTEM_PROMPT",
    "SamplerState", "TokenizedDataset", "build_tokenizer", "llama_zero_prompt", "load_openr1",
    "materialize_builtin_task", "qwen_chat_template", "render_prompt", "render_text", "tokenize_examples",
    "write_openr1",
]
