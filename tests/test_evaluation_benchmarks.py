"""Benchmark loaders: each public schema parses; bad files/rows/names give errors naming them."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hpt_jax.evaluation import benchmarks as bm


def _jsonl(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


def test_every_schema_parses(tmp_path):
  aime = _jsonl(tmp_path / "aime24.jsonl", [{"id": 60, "problem": "Find x.", "answer": "204", "url": "u"}])
  amc = tmp_path / "amc.parquet"
  pq.write_table(pa.Table.from_pylist([{"id": 0, "problem": "P?", "answer": 142.0, "url": "u"},
                                       {"id": 1, "problem": "Q?", "answer": 2.5, "url": "u"}]), amc)
  math500 = _jsonl(tmp_path / "math500.jsonl", [{
      "problem": "1+1?", "solution": "s", "answer": "\\frac{1}{2}", "subject": "Algebra", "level": 3,
      "unique_id": "test/algebra/1.json"}])
  olymp = _jsonl(tmp_path / "olympiadbench.jsonl", [{"id": 7, "question": "Q", "final_answer": ["3", "4"]}])
  gpqa = tmp_path / "gpqa_diamond.json"
  gpqa.write_text(json.dumps([{"problem": "Which?\nA. x\nB. y", "answer": "B"}]))
  arc = _jsonl(tmp_path / "arc_c.jsonl", [{
      "id": "Mercury_1", "question": "Why?", "answerKey": "C",
      "choices": {"text": ["a", "b", "c"], "label": ["A", "B", "C"]}},
      {"id": "Mercury_2", "question": "How?", "answerKey": "2", "choices": {"text": ["u", "v"], "label": ["1", "2"]}}])
  builtin = _jsonl(tmp_path / "builtin.jsonl", [{
      "prompt": [{"role": "system", "content": "sys"}, {"role": "user", "content": "2+3=?"}],
      "reward_model": {"ground_truth": "5"}, "extra_info": {"index": 11, "level": 2}}])

  assert bm.load_benchmark("aime24", aime) == [
      bm.Problem(benchmark="aime24", problem_id="60", question="Find x.", answer="204")]
  amc_problems = bm.load_benchmark("amc", amc)
  assert [p.answer for p in amc_problems] == ["142", "2.5"]
  (m,) = bm.load_benchmark("math500", math500)
  assert (m.problem_id, m.level, m.answer) == ("test/algebra/1.json", "3", "\\frac{1}{2}")
  (o,) = bm.load_benchmark("olympiadbench", olymp)
  assert o.answer == ("3", "4") and o.question == "Q"
  (g,) = bm.load_benchmark("gpqa_diamond", gpqa)
  assert g.answer == "B" and g.problem_id == "0" and bm.get_benchmark("gpqa_diamond").grading == bm.Grading.CHOICE
  (a, a_numeric) = bm.load_benchmark("arc_c", arc)
  assert a.question == "Why?\nA. a\nB. b\nC. c" and a.answer == "C"
  # Some ARC rows label options "1".."4": shown and graded as letters.
  assert a_numeric.question == "How?\nA. u\nB. v" and a_numeric.answer == "B"
  (b,) = bm.load_benchmark("builtin", builtin)
  assert (b.question, b.answer, b.problem_id, b.level) == ("2+3=?", "5", "11", "2")
  assert bm.find_benchmark_file(tmp_path, "amc") == amc
  assert len(bm.load_benchmark("amc", amc, limit=1)) == 1


def test_protocol_defaults_and_override():
  for name in ("aime24", "aime25", "amc"):
    assert bm.get_benchmark(name).protocol == bm.Protocol(temperature=0.6, top_p=0.95, max_new_tokens=8192,
                                                          num_samples=32)
  for name in ("math500", "minerva", "olympiadbench", "gpqa_diamond", "arc_c"):
    assert bm.get_benchmark(name).protocol.num_samples == 1
  p = bm.get_benchmark("aime24").protocol.override(num_samples=4, temperature=None)
  assert (p.num_samples, p.temperature) == (4, 0.6)
  with pytest.raises(ValueError, match="top_p"):
    bm.Protocol(top_p=0.0)
  with pytest.raises(ValueError, match="unknown Protocol field"):
    p.override(seed=1)


def test_unknown_name_lists_known():
  with pytest.raises(ValueError, match=r"unknown benchmark 'aime23'.*aime24.*math500"):
    bm.get_benchmark("aime23")
  with pytest.raises(FileNotFoundError, match="tried"):
    bm.find_benchmark_file("/nonexistent", "math500")


def test_malformed_files_and_rows_name_file_and_row(tmp_path):
  bad_json = tmp_path / "a.jsonl"
  bad_json.write_text('{"problem": "p", "answer": "1"}\n{"problem": \n')
  with pytest.raises(ValueError, match=r"a\.jsonl: line 2 is not valid JSON"):
    bm.load_benchmark("aime24", bad_json)
  missing = _jsonl(tmp_path / "b.jsonl", [{"problem": "p", "answer": "1"}, {"problem": "q"}])
  with pytest.raises(ValueError, match=r"b\.jsonl: row 1: missing answer field"):
    bm.load_benchmark("aime25", missing)
  empty = _jsonl(tmp_path / "c.jsonl", [{"problem": "p", "answer": "  "}])
  with pytest.raises(ValueError, match=r"c\.jsonl: row 0: empty answer"):
    bm.load_benchmark("math500", empty)
  dup = _jsonl(tmp_path / "d.jsonl", [{"id": 1, "problem": "p", "answer": "1"}] * 2)
  with pytest.raises(ValueError, match=r"d\.jsonl: row 1 repeats problem id '1'"):
    bm.load_benchmark("amc", dup)
  bad_choices = _jsonl(tmp_path / "e.jsonl", [{"question": "q", "answerKey": "A", "choices": {"text": ["x"]}}])
  with pytest.raises(ValueError, match=r"e\.jsonl: row 0 choices"):
    bm.load_benchmark("arc_c", bad_choices)
  not_letter = tmp_path / "h.json"
  not_letter.write_text(json.dumps([{"problem": "p\nA. x", "answer": "A"}, {"problem": "q", "answer": "42"}]))
  with pytest.raises(ValueError, match=r"h\.json: row 1: multiple-choice answer must be an option letter"):
    bm.load_benchmark("gpqa_diamond", not_letter)
  not_list = tmp_path / "f.json"
  not_list.write_text('{"problem": "p"}')
  with pytest.raises(ValueError, match=r"f\.json: expected a JSON list"):
    bm.load_benchmark("gpqa_diamond", not_list)
  with pytest.raises(ValueError, match=r"g\.txt: unsupported file type"):
    (tmp_path / "g.txt").write_text("x")
    bm.load_benchmark("aime24", tmp_path / "g.txt")
