"""The trainer's validator encodes prompts exactly as training prompts are tokenised (and as the
evaluation package's LLAMA_ZERO style does): with the tokenizer's BOS for the Llama zero template,
without extra special tokens for chat templates."""

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from hpt_jax import data as data_lib
from hpt_jax import sampling
from hpt_jax.evaluation import benchmarks as bm
from hpt_jax.evaluation import build as eval_build
from hpt_jax.training.config import ValidationConfig
from hpt_jax.training.validation import Validator

BOS, EOS = 0, 2


@pytest.fixture(scope="module")
def llama_like_tokenizer():
  # Word-level stand-in with the Llama behaviour under test: the tokenizer itself adds BOS.
  words = ["Question:", "Answer:", "Let's", "think", "step", "by", "step.", "Please", "reason", "and", "put",
           "your", "final", "answer", "within", "\\boxed{}.", "What", "is", "1", "+", "2", "?", "3", "4"]
  vocab = {"<|begin_of_text|>": BOS, "<unk>": 1, "<|end_of_text|>": EOS} | {w: i + 3 for i, w in enumerate(words)}
  tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                     special_tokens=[("<|begin_of_text|>", BOS)])
  return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>",
                                 unk_token="<unk>")


class _RecordingSampler(sampling.Sampler):
  """The real host wrapper's bookkeeping, with `generate` recording the prompt ids it is given."""

  def __init__(self, tokenizer):
    super().__init__(model=None, eos_ids=(EOS,), pad_id=EOS, buckets=sampling.Buckets(prompt=(64,), response=(4,)),
                     tokenizer=tokenizer)
    self.prompts = []

  def generate(self, params, prompts, *, strategy, max_new_tokens, num_samples=1, seed=0, prompt_ids=None):
    del params, strategy, seed
    self.prompts.extend(list(p) for p in prompts)
    rows = len(prompts) * num_samples
    zeros = np.zeros((rows, max_new_tokens), np.int32)
    out = sampling.SampleOutput(
        prompt_tokens=zeros, prompt_mask=zeros.astype(bool), tokens=zeros, mask=zeros, logprobs=zeros * 0.0,
        sampling_logprobs=zeros * 0.0, finish_reason=np.zeros(rows, np.int32),
        lengths=np.ones(rows, np.int32), prompt_ids=np.repeat(np.asarray(prompt_ids), num_samples),
        sample_ids=np.tile(np.arange(num_samples), len(prompts)), num_steps=np.int32(1))
    return sampling.Rollouts(output=out, texts=["\\boxed{3}"] * rows)


def _unique(prompts):
  return {tuple(p) for p in prompts}


class _Data:
  """The slice of `TrainingData` the validator reads."""

  def __init__(self, tokenizer, template):
    self.tokenizer, self.template, self.reward_pool = tokenizer, template, None

  def render(self, question):
    return data_lib.render_text(self.template, self.tokenizer, [data_lib.Message("user", question)])

  def validation_problems(self, count):
    return [bm.Problem(benchmark="v", problem_id=str(i), question=f"What is 1 + {i} ?", answer=str(1 + i))
            for i in range(1, 1 + count)]


def test_llama_zero_validation_prompts_are_the_training_prompts_with_bos(llama_like_tokenizer):
  tok = llama_like_tokenizer
  data = _Data(tok, data_lib.PromptTemplate.LLAMA_ZERO)
  sampler = _RecordingSampler(tok)
  validator = Validator(config=ValidationConfig(every_steps=1, num_problems=2), data=data, sampler=sampler,
                        max_new_tokens=4, seed=0)
  metrics = validator(None, step=0)
  # "\\boxed{3}" answers problem 1 + 2 only.
  assert metrics["val/accuracy"] == pytest.approx(0.5)
  problems = data.validation_problems(2)
  # The reference: how the data layer tokenises the same question for training.
  expected = [data_lib.render_prompt(data_lib.PromptTemplate.LLAMA_ZERO, tok, [data_lib.Message("user", p.question)])[1]
              for p in problems]
  # (The evaluator fills its fixed-size batches with repeats, hence the sets.)
  assert _unique(sampler.prompts) == _unique(expected)
  assert all(p[0] == BOS and p.count(BOS) == 1 for p in sampler.prompts)
  # And as the evaluation package's LLAMA_ZERO style encodes them.
  render = eval_build.make_render(eval_build.PromptStyle.LLAMA_ZERO, tok)
  assert _unique(sampler.prompts) == _unique(tok.encode(render(p.question), add_special_tokens=True)
                                             for p in problems)


def test_chat_validation_prompts_get_no_extra_special_tokens(llama_like_tokenizer):
  # The same tokenizer under CHAT: the template writes every special token, so no BOS is added.
  tok = llama_like_tokenizer
  tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
  data = _Data(tok, data_lib.PromptTemplate.CHAT)
  sampler = _RecordingSampler(tok)
  Validator(config=ValidationConfig(every_steps=1, num_problems=1), data=data, sampler=sampler,
            max_new_tokens=4, seed=0)(None, step=0)
  question = data.validation_problems(1)[0].question
  assert _unique(sampler.prompts) == _unique([data_lib.render_prompt(
      data_lib.PromptTemplate.CHAT, tok, [data_lib.Message("user", question)])[1]])
  assert not any(BOS in p for p in sampler.prompts)
