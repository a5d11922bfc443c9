"""The OpenR1-schema loader: good rows become Examples, bad rows are skipped, counted and reported."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hpt_jax.data import BadDataError, BadRow, PromptTemplate, load_openr1, tokenize_examples, write_openr1
from hpt_jax.data.tokenizer import build_tokenizer


def good_row(i, *, question=None, target=None, gt=None, level=None):
  extra = {"index": 1000 + i, "split": "train"}
  if level is not None:
    extra["level"] = level
  return {
      "prompt": [{"role": "system", "content": "LUFFY system prompt"},
                 {"role": "user", "content": question or f"What is {i}+1?"}],
      "target": [{"role": "assistant", "content": target or f"<think>\n{i}+1\n</think> \\boxed{{{i + 1}}}"}],
      "reward_model": {"ground_truth": gt if gt is not None else str(i + 1), "style": "rule"},
      "data_source": "OpenR1-Math",
      "extra_info": extra,
  }


def _bad_rows():
  """(row, reason) for every kind of bad row the loader must skip."""
  no_gt = good_row(90)
  no_gt["reward_model"] = {"style": "rule"}
  empty_gt = good_row(91, gt="  ")
  empty_target = good_row(92)
  empty_target["target"] = []
  non_string = good_row(93)
  non_string["prompt"][1]["content"] = 5
  malformed = good_row(94)
  malformed["prompt"] = "What is 2+2?"
  only_system = good_row(95)
  only_system["prompt"] = only_system["prompt"][:1]
  return [(no_gt, BadRow.MISSING_GROUND_TRUTH), (empty_gt, BadRow.MISSING_GROUND_TRUTH),
          (empty_target, BadRow.EMPTY_TARGET), (non_string, BadRow.NON_STRING_CONTENT),
          (malformed, BadRow.MALFORMED_PROMPT), (only_system, BadRow.MALFORMED_PROMPT)]


def test_jsonl_with_bad_rows_reports_counts_and_first_ids(tmp_path):
  rows = [good_row(i) for i in range(50)]
  bad = _bad_rows()
  positions = [3, 10, 11, 20, 30, 40]  # where each bad row goes (file row numbers).
  for pos, (row, _) in zip(positions, bad):
    rows.insert(pos, row)
  path = write_openr1(rows, tmp_path / "train.jsonl")
  with path.open("a") as f:
    f.write("{not json\n")  # row number 56
  examples, report = load_openr1(path, max_bad_fraction=0.2)
  assert report.total == 57 and report.kept == 50 and report.bad == 7
  assert report.bad_counts == {BadRow.MISSING_GROUND_TRUTH.value: 2, BadRow.EMPTY_TARGET.value: 1,
                               BadRow.NON_STRING_CONTENT.value: 1, BadRow.MALFORMED_PROMPT.value: 2,
                               BadRow.INVALID_JSON.value: 1}
  # The first five bad rows, in file order, by row number and extra_info.index.
  assert [(r, rid) for r, rid, _ in report.first_bad] == [(3, "1090"), (10, "1091"), (11, "1092"),
                                                          (20, "1093"), (30, "1094")]
  assert [reason for _, _, reason in report.first_bad] == [b.value for _, b in bad[:5]]
  assert "row 3 (id 1090)" in report.summary()
  # Kept rows: system message dropped, ids / targets / ground truths as written.
  assert [e.id for e in examples] == [str(1000 + i) for i in range(50)]
  assert all(len(e.messages) == 1 and e.messages[0].role == "user" for e in examples)
  assert examples[7].question == "What is 7+1?" and examples[7].ground_truth == "8"
  assert examples[7].target == "<think>\n7+1\n</think> \\boxed{8}"
  assert examples[7].level == -1


def test_too_many_bad_rows_fail_with_the_report(tmp_path):
  rows = [good_row(i) for i in range(20)] + [row for row, _ in _bad_rows()]
  path = write_openr1(rows, tmp_path / "train.jsonl")
  with pytest.raises(BadDataError, match=r"row 20 \(id 1090\)") as info:
    load_openr1(path, max_bad_fraction=0.1)
  assert info.value.report.bad == 6 and info.value.report.kept == 20
  # The same file loads when the threshold allows 6 of 26.
  assert load_openr1(path, max_bad_fraction=0.25)[1].kept == 20


def test_parquet_with_null_ground_truth_and_empty_target(tmp_path):
  rows = [good_row(i, level=1 + i % 5) for i in range(10)]
  rows[2]["reward_model"]["ground_truth"] = None
  rows[6]["target"] = []
  rows[8]["reward_model"]["ground_truth"] = None
  path = tmp_path / "train.parquet"
  pq.write_table(pa.Table.from_pylist(rows), path)
  examples, report = load_openr1(path, max_bad_fraction=0.5)
  assert (report.total, report.kept) == (10, 7)
  assert report.bad_counts == {BadRow.MISSING_GROUND_TRUTH.value: 2, BadRow.EMPTY_TARGET.value: 1}
  assert [r for r, _, _ in report.first_bad] == [2, 6, 8]
  assert [e.level for e in examples] == [1 + i % 5 for i in (0, 1, 3, 4, 5, 7, 9)]


def test_list_ground_truth_and_rl_only_rows(tmp_path):
  rows = [good_row(0, gt=["1", "1.0"]), good_row(1)]
  rows[1]["target"] = []
  path = write_openr1(rows, tmp_path / "rl.jsonl")
  with pytest.raises(BadDataError):
    load_openr1(path, max_bad_fraction=0.0)
  examples, report = load_openr1(path, max_bad_fraction=0.0, require_target=False)
  assert report.kept == 2 and examples[0].ground_truth == ("1", "1.0") and examples[1].target is None


def test_unsupported_or_missing_file(tmp_path):
  (tmp_path / "x.csv").write_text("a")
  with pytest.raises(ValueError, match="unsupported"):
    load_openr1(tmp_path / "x.csv")
  with pytest.raises(FileNotFoundError):
    load_openr1(tmp_path / "nope.jsonl")


@pytest.fixture(scope="module")
def small_tokenizer(tmp_path_factory):
  corpus = [json.dumps(good_row(i)) for i in range(30)]
  return build_tokenizer(corpus, tmp_path_factory.mktemp("tok"), vocab_size=320, system_prompt="Solve.")


def test_tokenize_drops_long_prompts_and_truncates_demonstrations(tmp_path, small_tokenizer):
  rows = [good_row(i) for i in range(6)]
  rows[1]["prompt"][1]["content"] = "What is " + "1+" * 40 + "1?"
  rows[4]["target"][0]["content"] = "step " * 60 + "\\boxed{5}"
  examples, _ = load_openr1(write_openr1(rows, tmp_path / "t.jsonl"))
  tok = small_tokenizer
  ds = tokenize_examples(examples, tok, template=PromptTemplate.CHAT, max_prompt_length=40,
                         max_response_length=48)
  assert ds.stats == {"dropped_long_prompts": 1, "truncated_targets": 1, "missing_targets": 0}
  assert ds.ids == ("1000", "1002", "1003", "1004", "1005")
  eos = tok.convert_tokens_to_ids("<|im_end|>")
  for k, i in enumerate([0, 2, 3, 4, 5]):
    prompt_text = tok.decode(ds.prompt_tokens[k])
    assert prompt_text == ("<|im_start|>system\nSolve.<|im_end|>\n<|im_start|>user\n"
                           f"{rows[i]['prompt'][1]['content']}<|im_end|>\n<|im_start|>assistant\n")
    target = tok.decode(ds.target_tokens[k])
    if i == 4:  # truncated: 48 tokens, no EOS.
      assert len(ds.target_tokens[k]) == 48 and eos not in ds.target_tokens[k]
      assert rows[i]["target"][0]["content"].startswith(target)
    else:
      assert ds.target_tokens[k][-1] == eos and target == rows[i]["target"][0]["content"] + "<|im_end|>"
  tokens, mask = ds.prompts([0, 1], pad_id=0)
  assert mask[0].sum() == len(ds.prompt_tokens[0]) and mask[:, -1].all()  # left-padded
  assert (tokens[~mask] == 0).all()
  tokens, mask = ds.targets([0, 3], pad_id=0)
  assert mask[:, 0].all() and mask[1].sum() == 48  # right-padded
