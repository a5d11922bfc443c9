"""Prompt templates render exactly PAPER.md §3's strings, through a tiny locally trained tokenizer."""

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from hpt_jax.data import (
    Message, PromptTemplate, QWEN_MATH_SYSTEM_PROMPT, build_tokenizer, qwen_chat_template, render_prompt)

QUESTION = "Let $f(x)=x^2$. What is $f(3)$?"
# PAPER.md §3 "Prompt template", written out literally (not built from the code's constants).
QWEN_EXPECTED = ("<|im_start|>system\nPlease reason step by step, and put your final answer within "
                 "\\boxed{}.<|im_end|>\n<|im_start|>user\nLet $f(x)=x^2$. What is $f(3)$?<|im_end|>\n"
                 "<|im_start|>assistant\n")
LLAMA_EXPECTED = ("Question:\nLet $f(x)=x^2$. What is $f(3)$?\nPlease reason step by step, and put your "
                  "final answer within \\boxed{}.\nAnswer:\nLet's think step by step.")


@pytest.fixture(scope="module")
def qwen_math_tokenizer(tmp_path_factory):
  corpus = [QUESTION, "The answer is \\boxed{9}.", "x^2 + 2x + 1"] * 20
  return build_tokenizer(corpus, tmp_path_factory.mktemp("tok"), vocab_size=300,
                         system_prompt=QWEN_MATH_SYSTEM_PROMPT)


def test_qwen_math_chat_template_renders_paper_string(qwen_math_tokenizer):
  text, ids = render_prompt(PromptTemplate.CHAT, qwen_math_tokenizer, [Message("user", QUESTION)])
  assert text == QWEN_EXPECTED
  # Byte-level BPE round-trips, and the ChatML markers are single special tokens.
  assert qwen_math_tokenizer.decode(ids) == QWEN_EXPECTED
  im_start = qwen_math_tokenizer.convert_tokens_to_ids("<|im_start|>")
  im_end = qwen_math_tokenizer.convert_tokens_to_ids("<|im_end|>")
  assert ids.count(im_start) == 3 and ids.count(im_end) == 2
  assert ids[0] == im_start  # no BOS / extra special token in front


def test_chat_template_uses_the_conversation_system_message_when_given(qwen_math_tokenizer):
  chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1="}]
  text = qwen_math_tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
  assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n1+1=<|im_end|>\n"
                  "<|im_start|>assistant\n")


@pytest.mark.parametrize("system_prompt", [None, "Add; box it.", "Quote ' and \\frac{a}{b}\nnewline"])
def test_configurable_system_prompt_renders_verbatim(qwen_math_tokenizer, system_prompt):
  qwen_math_tokenizer.chat_template = qwen_chat_template(system_prompt=system_prompt)
  try:
    text = qwen_math_tokenizer.apply_chat_template([{"role": "user", "content": "2+2="}], tokenize=False,
                                                   add_generation_prompt=True)
  finally:
    qwen_math_tokenizer.chat_template = qwen_chat_template(system_prompt=QWEN_MATH_SYSTEM_PROMPT)
  head = "" if system_prompt is None else "<|im_start|>system\n" + system_prompt + "<|im_end|>\n"
  assert text == head + "<|im_start|>user\n2+2=<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def llama_like_tokenizer():
  # A word-level stand-in with Llama's behaviour that matters here: BOS is added by the tokenizer.
  vocab = {"<|begin_of_text|>": 0, "<unk>": 1}
  tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                     special_tokens=[("<|begin_of_text|>", 0)])
  return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", unk_token="<unk>")


def test_llama_zero_template_renders_paper_string_and_adds_bos(llama_like_tokenizer):
  text, ids = render_prompt(PromptTemplate.LLAMA_ZERO, llama_like_tokenizer, [Message("user", QUESTION)])
  assert text == LLAMA_EXPECTED
  assert ids[0] == 0 and ids.count(0) == 1


def test_render_requires_a_final_user_message(qwen_math_tokenizer):
  with pytest.raises(ValueError, match="user"):
    render_prompt(PromptTemplate.CHAT, qwen_math_tokenizer, [Message("assistant", "hi")])
