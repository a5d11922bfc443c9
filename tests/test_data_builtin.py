"""The built-in arithmetic task: demonstrations, determinism, held-out split, files, tokenizer."""

import os
import re

import numpy as np
import pytest
from transformers import AutoTokenizer

from hpt_jax.data import BuiltinTaskConfig, PromptTemplate, load_openr1, materialize_builtin_task, tokenize_examples
from hpt_jax.data import arithmetic
from hpt_jax.rewards import compute_score

SMALL = BuiltinTaskConfig(seed=7, train_per_level=60, eval_per_level=8)


def test_column_addition_matches_the_feasibility_note_format():
  # /work/shared/notes/tiny-model-feasibility.md, written out by hand.
  assert arithmetic.column_addition(47, 85) == "7+5+0=12\n4+8+1=13\n\\boxed{132}"
  assert arithmetic.column_addition(5, 3) == "5+3+0=8\n\\boxed{8}"
  assert arithmetic.column_addition(999, 1) == "9+1+0=10\n9+0+1=10\n9+0+1=10\n\\boxed{1000}"


@pytest.mark.parametrize("level", arithmetic.LEVELS)
def test_problems_are_correct_and_graded_by_level(level):
  problems = arithmetic.generate(seed=0, level=level, count=30)
  for p in problems:
    a, b = (int(x) for x in re.fullmatch(r"(\d+)\+(\d+)=", p.question).groups())
    assert len(str(a)) == len(str(b)) == level
    assert p.answer == str(a + b) and p.level == level
    # Every column line is arithmetically right, and its carry is the previous column's tens digit.
    lines = p.demonstration.split("\n")
    carry = 0
    for line, (x_digit, y_digit) in zip(lines[:-1], zip(str(a)[::-1], str(b)[::-1])):
      x, y, c, s = (int(v) for v in re.fullmatch(r"(\d)\+(\d)\+(\d)=(\d+)", line).groups())
      assert (x, y, c) == (int(x_digit), int(y_digit), carry) and s == x + y + c
      carry = s // 10
    assert len(lines) == level + 1
    assert compute_score(p.demonstration, p.answer) == 1.0  # the demonstration earns reward 1.
  assert problems == arithmetic.generate(seed=0, level=level, count=30)
  assert problems != arithmetic.generate(seed=1, level=level, count=30)


@pytest.fixture(scope="module")
def task(tmp_path_factory):
  return materialize_builtin_task(tmp_path_factory.mktemp("builtin"), SMALL)


def test_materialized_files_load_through_the_real_loader(task):
  train, report = load_openr1(task.train_file, max_bad_fraction=0.0)
  assert report.kept == report.total == 60 * 5
  assert np.bincount([e.level for e in train]).tolist() == [0, 60, 60, 60, 60, 60]
  held_out = {}
  for level, path in task.eval_files.items():
    rows, _ = load_openr1(path, max_bad_fraction=0.0)
    assert len(rows) == 8 and {e.level for e in rows} == {level}
    assert len({e.question for e in rows}) == 8  # distinct
    held_out[level] = {e.question for e in rows}
  all_eval, _ = load_openr1(task.eval_file, max_bad_fraction=0.0)
  assert {e.question for e in all_eval} == set().union(*held_out.values())
  # Held-out problems never appear in training, even at level 1 (only 100 distinct problems).
  assert not {e.question for e in train} & set().union(*held_out.values())
  for e in train[:20]:
    assert compute_score(e.target, e.ground_truth) == 1.0
    assert e.question.endswith("=") and e.data_source == "builtin_arithmetic"


def test_tokenizer_directory(task):
  tok = AutoTokenizer.from_pretrained(task.tokenizer_dir)
  assert len(tok) <= 512
  assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]
  assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
  # Digits are single tokens (what column arithmetic needs).
  ids = tok("12345+67890=", add_special_tokens=False)["input_ids"]
  assert tok.convert_ids_to_tokens(ids) == list("12345+67890=")
  train, _ = load_openr1(task.train_file)
  ds = tokenize_examples(train, tok, template=PromptTemplate.CHAT, max_prompt_length=64, max_response_length=96)
  assert ds.stats["dropped_long_prompts"] == 0 and ds.stats["truncated_targets"] == 0
  # Short prompts for a small-context model: the longest (level 5) is well under 40 tokens.
  assert max(len(p) for p in ds.prompt_tokens) <= 40
  k = int(np.argmax(ds.levels))
  assert tok.decode(ds.prompt_tokens[k]) == (
      "<|im_start|>system\nAdd the numbers; box the sum.<|im_end|>\n<|im_start|>user\n"
      f"{train[k].question}<|im_end|>\n<|im_start|>assistant\n")
  assert tok.decode(ds.target_tokens[k]) == train[k].target + "<|im_end|>"


def test_materialize_is_deterministic_and_reused(task, tmp_path):
  mtime = os.path.getmtime(task.train_file)
  again = materialize_builtin_task(task.root, SMALL)
  assert again == task and os.path.getmtime(task.train_file) == mtime  # reused, not rewritten
  other = materialize_builtin_task(tmp_path / "copy", SMALL)
  a, _ = load_openr1(task.train_file)
  b, _ = load_openr1(other.train_file)
  assert a == b
  assert (task.tokenizer_dir / "tokenizer.json").read_text() == (other.tokenizer_dir / "tokenizer.json").read_text()
  with pytest.raises(FileExistsError, match="another config"):
    materialize_builtin_task(task.root, BuiltinTaskConfig(seed=8, train_per_level=60, eval_per_level=8))
