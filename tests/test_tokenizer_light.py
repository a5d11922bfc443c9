"""`data.load_tokenizer` serves a plain fast-tokenizer directory without transformers (no torch import),
and every call the package makes gives exactly what `transformers.AutoTokenizer` gives on that directory."""

import json
import subprocess
import sys

import pytest
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from hpt_jax.data import tokenizer as tok_lib
from hpt_jax.data.templates import QWEN_MATH_SYSTEM_PROMPT

_TEXTS = ["What is 12 + 7?", "The answer is \\boxed{19}.", "  spaces  and\ttabs\n", "ünïcödé 3.14"]
_CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 + 3?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Add 4 and 5."},
     {"role": "assistant", "content": "9"}, {"role": "user", "content": "And 6?"}],
]
# A Llama-style template that reads the special tokens (what transformers passes into the render).
_LLAMA_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] | tojson }}{{ eos_token }}"
                   "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
  """The built-in task's tokenizer: ChatML specials, the Qwen-style template with a system prompt."""
  d = tmp_path_factory.mktemp("chat_tok")
  tok_lib.build_tokenizer(_TEXTS * 20, d, vocab_size=300, system_prompt=QWEN_MATH_SYSTEM_PROMPT)
  return d


@pytest.fixture(scope="module")
def bos_dir(tmp_path_factory):
  """A Llama-like tokenizer: BOS added by tokenizer.json's post-processor, a template using bos/eos."""
  d = tmp_path_factory.mktemp("bos_tok")
  raw = tok_lib.train_bpe(_TEXTS * 20, vocab_size=300)
  raw.add_special_tokens(["<s>", "</s>"])
  bos = raw.token_to_id("<s>")
  raw.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                     special_tokens=[("<s>", bos)])
  hf = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>",
                                            pad_token="<|endoftext|>")
  hf.chat_template = _LLAMA_TEMPLATE
  hf.save_pretrained(str(d))
  return d


@pytest.mark.parametrize("which", ["chat_dir", "bos_dir"])
def test_light_tokenizer_matches_transformers(which, request):
  directory = request.getfixturevalue(which)
  light = tok_lib.load_tokenizer(directory)
  ref = transformers.AutoTokenizer.from_pretrained(str(directory))
  assert isinstance(light, tok_lib.LightTokenizer)
  assert len(light) == len(ref)
  for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
    assert getattr(light, name) == getattr(ref, name), name
    assert getattr(light, f"{name}_id") == getattr(ref, f"{name}_id"), name
  for special in (False, True):
    assert light(_TEXTS, add_special_tokens=special)["input_ids"] == ref(_TEXTS, add_special_tokens=special)["input_ids"]
    for text in _TEXTS:
      ids = light.encode(text, add_special_tokens=special)
      assert ids == ref.encode(text, add_special_tokens=special)
      assert light(text, add_special_tokens=special)["input_ids"] == ids
  eos_row = ref.encode(_TEXTS[1], add_special_tokens=False) + [ref.eos_token_id, ref.pad_token_id]
  for skip in (False, True):
    assert light.decode(eos_row, skip_special_tokens=skip) == ref.decode(eos_row, skip_special_tokens=skip)
    assert light.batch_decode([eos_row], skip_special_tokens=skip) == ref.batch_decode([eos_row], skip_special_tokens=skip)
  for conv in _CONVERSATIONS:
    for gen in (False, True):
      text = light.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen)
      assert text == ref.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen)
      assert light.apply_chat_template(conv, add_generation_prompt=gen) == light.encode(text, add_special_tokens=False)
  if which == "bos_dir":  # the template really saw the special tokens
    assert light.apply_chat_template(_CONVERSATIONS[0], tokenize=False).startswith("<s>user: \"What")


def test_tokenizers_transformers_would_rewrite_go_through_transformers(chat_dir, tmp_path):
  # add_bos_token is applied by transformers' Python code, not by tokenizer.json: not served light.
  for f in chat_dir.iterdir():
    (tmp_path / f.name).write_bytes(f.read_bytes())
  config = json.loads((tmp_path / "tokenizer_config.json").read_text())
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(config | {"add_bos_token": True}))
  assert not isinstance(tok_lib.load_tokenizer(tmp_path), tok_lib.LightTokenizer)
  # A special token missing from the vocabulary is named.
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(config | {"eos_token": "<nope>"}))
  with pytest.raises(ValueError, match="eos_token '<nope>'"):
    tok_lib.load_tokenizer(tmp_path)


def test_loading_imports_neither_transformers_nor_torch(chat_dir):
  code = ("import sys; from hpt_jax.data.tokenizer import load_tokenizer; "
          f"t = load_tokenizer({str(chat_dir)!r}); t.apply_chat_template([{{'role': 'user', 'content': '1+1'}}]); "
          "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip() == "[]"
