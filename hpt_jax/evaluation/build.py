"""Assembles an `Evaluator` from a model: the CLI's path from an HF directory to a ready evaluator.

The trainer does not need this module: it already holds a `sampling.Sampler` and a `RewardPool`, and
builds `Evaluator(backend=SamplerBackend(sampler), grader=RewardGrader(pool=pool), render=...)` once,
then calls `evaluate(params, jobs)` with its live parameters at every validation.

Prompts (`PromptStyle`): by default the paper's harness (PAPER.md §4, DeepMath `uni_eval.py` with
`chat_template_name="default"`, `system_prompt_name="simplerl"`): the model's own chat template with
the system message "Please reason step by step, and put your final answer within \\boxed{}.". The
training templates of the data layer are the alternatives: CHAT (user turn only, so the template's
default system prompt applies, e.g. the built-in task's) and LLAMA_ZERO (HPT's Llama zero prompt, BOS
added by the tokenizer).
"""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax

from hpt_jax import data
from hpt_jax.data import templates
from hpt_jax import sampling
from hpt_jax.evaluation import evaluator as evaluator_lib
from hpt_jax.evaluation.backends import SamplerBackend
from hpt_jax.evaluation.grading import RewardGrader, Scorer
from hpt_jax.models import hf_io
from hpt_jax.sampling.lm import CausalLMDecoder

SIMPLERL_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."


class PromptStyle(enum.Enum):
  """How a benchmark question becomes the prompt text."""
  HARNESS = "harness"  # chat template + the "simplerl" system message (the paper's evaluation)
  CHAT = "chat"  # the data layer's CHAT template: the user turn only (template's default system prompt)
  LLAMA_ZERO = "llama_zero"  # the data layer's Llama zero template (plain text, tokenizer adds BOS)


def _harness_text(tokenizer: Any, question: str) -> str:
  if not getattr(tokenizer, "chat_template", None):
    raise ValueError("PromptStyle.HARNESS needs a tokenizer with a chat_template; use llama_zero for base "
                     "Llama checkpoints")
  messages = [{"role": "system", "content": SIMPLERL_SYSTEM_PROMPT}, {"role": "user", "content": question}]
  return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _training_text(template: data.PromptTemplate) -> Callable[[Any, str], str]:
  return lambda tokenizer, question: data.render_text(template, tokenizer, [data.Message("user", question)])


_RENDER_TEXT: dict[PromptStyle, Callable[[Any, str], str]] = {
    PromptStyle.HARNESS: _harness_text,
    PromptStyle.CHAT: _training_text(data.PromptTemplate.CHAT),
    PromptStyle.LLAMA_ZERO: _training_text(data.PromptTemplate.LLAMA_ZERO),
}
# Whether the rendered text is encoded with the tokenizer's own special tokens (only Llama's BOS needs it).
# The training templates take the data layer's rule, so evaluation and training cannot drift apart.
_ADD_SPECIAL_TOKENS = {
    PromptStyle.HARNESS: False,  # the chat template writes every special token itself
    PromptStyle.CHAT: templates.adds_special_tokens(data.PromptTemplate.CHAT),
    PromptStyle.LLAMA_ZERO: templates.adds_special_tokens(data.PromptTemplate.LLAMA_ZERO),
}


def make_render(style: PromptStyle, tokenizer: Any) -> Callable[[str], str]:
  """question -> prompt text under `style` (see `PromptStyle`)."""
  render_text = _RENDER_TEXT[style]
  return lambda question: render_text(tokenizer, question)


def eos_ids(config_eos: int | Sequence[int] | None, tokenizer: Any) -> tuple[int, ...]:
  """Every token that ends a response: the model config's EOS id(s) and the tokenizer's."""
  ids = [] if config_eos is None else [config_eos] if isinstance(config_eos, int) else list(config_eos)
  if tokenizer.eos_token_id is not None:
    ids.append(tokenizer.eos_token_id)
  if not ids:
    raise ValueError("neither the model config nor the tokenizer names an EOS token")
  return tuple(sorted(set(int(i) for i in ids)))


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoadedModel:
  """A model ready for sampling: the decoder (static), its parameters (arrays), tokenizer and EOS ids."""
  decoder: CausalLMDecoder
  params: Any
  tokenizer: Any
  eos_ids: tuple[int, ...]


def load_hf_model(hf_dir: str | os.PathLike, *, mesh: jax.sharding.Mesh | None = None,
                  **config_overrides: Any) -> LoadedModel:
  """Loads an HF `save_pretrained` directory (weights + tokenizer) with the model engineer's importer."""
  import transformers  # deferred: heavy, and only the CLI path needs it

  model = hf_io.load_pretrained(hf_dir, mesh=mesh, **config_overrides)
  tokenizer = transformers.AutoTokenizer.from_pretrained(os.fspath(hf_dir))
  decoder, params = CausalLMDecoder.from_model(model)
  return LoadedModel(decoder=decoder, params=params, tokenizer=tokenizer,
                     eos_ids=eos_ids(model.config.eos_token_id, tokenizer))


def build_evaluator(loaded: LoadedModel, *, prompt_style: PromptStyle = PromptStyle.HARNESS,
                    buckets: sampling.Buckets = sampling.Buckets(), batch_rows: int = 64, seed: int = 42,
                    pool: Scorer | None = None, progress: bool = True) -> evaluator_lib.Evaluator:
  """An `Evaluator` sampling with the jitted sampler and grading with the training verifier.

  Args:
    loaded: from `load_hf_model`.
    prompt_style: how questions become prompts.
    buckets: static prompt / response lengths of the sampler.
    batch_rows: sampled rows per call (see `Evaluator`).
    seed: base sampling seed.
    pool: a `rewards.RewardPool` for timed math grading (None: serial, in-process).
    progress: progress bars.
  """
  tok = loaded.tokenizer
  pad_id = tok.pad_token_id if tok.pad_token_id is not None else loaded.eos_ids[0]
  sampler = sampling.Sampler(loaded.decoder, eos_ids=loaded.eos_ids, pad_id=pad_id, buckets=buckets,
                             tokenizer=tok)
  backend = SamplerBackend(sampler, add_special_tokens=_ADD_SPECIAL_TOKENS[prompt_style])
  return evaluator_lib.Evaluator(backend=backend, grader=RewardGrader(pool=pool),
                                 render=make_render(prompt_style, tok), batch_rows=batch_rows, seed=seed,
                                 progress=progress)
