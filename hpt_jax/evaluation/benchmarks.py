"""Evaluation sets in their public schemas, read from local files, with the paper's protocol per set.

One table (`BENCHMARKS`) declares, for every benchmark, where its question / answer / id / level live in a
row of the public dataset, how answers are graded, and the paper's sampling protocol (PAPER.md §4:
temperature 0.6, top-p 0.95, 8,192 new tokens; 32 samples for AIME24/AIME25/AMC, 1 otherwise). Field
lists hold alternatives, first present wins, because mirrors of the same set spell a column differently
(SimpleRL's OlympiadBench has `question`/`final_answer`, zwhe99's copy `problem`/`answer`). A dotted
field (`reward_model.ground_truth`) walks nested dicts; a chat list (`prompt`) yields its last user turn.

Nothing here downloads: files are `<data_dir>/<name>.{jsonl,json,parquet}` or
`<data_dir>/<name>/test.{jsonl,json,parquet}`.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any


class Grading(enum.Enum):
  """How a response is checked against the ground truth."""
  MATH = "math"  # boxed-answer math verifier, the same as training
  CHOICE = "choice"  # multiple-choice: the chosen option letter must equal the key


@dataclasses.dataclass(frozen=True, kw_only=True)
class Protocol:
  """Sampling protocol of one benchmark (PAPER.md §4 defaults)."""
  temperature: float = 0.6
  top_p: float = 0.95
  max_new_tokens: int = 8192
  num_samples: int = 1

  def __post_init__(self):
    if self.temperature < 0:
      raise ValueError(f"Protocol.temperature must be >= 0, got {self.temperature}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"Protocol.top_p must lie in (0, 1], got {self.top_p}")
    if self.max_new_tokens < 1:
      raise ValueError(f"Protocol.max_new_tokens must be >= 1, got {self.max_new_tokens}")
    if self.num_samples < 1:
      raise ValueError(f"Protocol.num_samples must be >= 1, got {self.num_samples}")

  def override(self, **changes: Any) -> "Protocol":
    """A copy with the given fields replaced; `None` values keep the default (unset flags)."""
    unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
    if unknown:
      raise ValueError(f"unknown Protocol field(s) {sorted(unknown)}")
    return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


@dataclasses.dataclass(frozen=True, kw_only=True)
class BenchmarkSpec:
  """Schema and protocol of one evaluation set.

  Attributes:
    name: the name users pass (`--benchmarks=aime24,math500`).
    source: the public dataset the schema follows (documentation only; nothing is fetched).
    question_fields / answer_fields / id_fields / level_fields: candidate columns, first present wins;
      no id → the row index, no level → None.
    choices_field: for ARC-style rows, a `{"text": [...], "label": [...]}` column inlined into the
      question as "A. …" lines (GPQA files already carry them inline).
    grading: how responses are checked.
    protocol: the paper's default sampling protocol for this set.
  """
  name: str
  source: str
  question_fields: tuple[str, ...]
  answer_fields: tuple[str, ...]
  id_fields: tuple[str, ...] = ()
  level_fields: tuple[str, ...] = ()
  choices_field: str | None = None
  grading: Grading = Grading.MATH
  protocol: Protocol = Protocol()


@dataclasses.dataclass(frozen=True, kw_only=True)
class Problem:
  """One evaluation problem, schema-independent.

  Attributes:
    benchmark: the benchmark's name.
    problem_id: unique within the benchmark (the dataset's id column, or the row index).
    question: the text shown to the model (without chat template).
    answer: the ground truth; a tuple when several answers are accepted.
    level: difficulty level as a string ("1".."5" on MATH-500), or None.
  """
  benchmark: str
  problem_id: str
  question: str
  answer: str | tuple[str, ...]
  level: str | None = None


_MATH_32 = Protocol(num_samples=32)
_MATH_1 = Protocol(num_samples=1)

BENCHMARKS: Mapping[str, BenchmarkSpec] = {spec.name: spec for spec in (
    BenchmarkSpec(name="aime24", source="zwhe99/aime90:2024", question_fields=("problem",),
                  answer_fields=("answer",), id_fields=("id",), protocol=_MATH_32),
    BenchmarkSpec(name="aime25", source="math-ai/aime25:test", question_fields=("problem",),
                  answer_fields=("answer",), id_fields=("id",), protocol=_MATH_32),
    BenchmarkSpec(name="amc", source="AI-MO/aimo-validation-amc:train", question_fields=("problem",),
                  answer_fields=("answer",), id_fields=("id",), protocol=_MATH_32),
    BenchmarkSpec(name="math500", source="zwhe99/MATH:math500", question_fields=("problem",),
                  answer_fields=("answer",), id_fields=("unique_id",), level_fields=("level",),
                  protocol=_MATH_1),
    BenchmarkSpec(name="minerva", source="zwhe99/simplerl-minerva-math:test",
                  question_fields=("problem", "question"), answer_fields=("answer",),
                  id_fields=("idx", "id"), protocol=_MATH_1),
    BenchmarkSpec(name="olympiadbench", source="zwhe99/simplerl-OlympiadBench:test",
                  question_fields=("problem", "question"), answer_fields=("answer", "final_answer"),
                  id_fields=("id", "idx"), protocol=_MATH_1),
    BenchmarkSpec(name="gpqa_diamond", source="HPT repo data/GPQA/test.json (options inline, letter key)",
                  question_fields=("problem", "question"), answer_fields=("answer",),
                  id_fields=("id", "idx"), grading=Grading.CHOICE, protocol=_MATH_1),
    BenchmarkSpec(name="arc_c", source="allenai/ai2_arc:ARC-Challenge/test",
                  question_fields=("question",), answer_fields=("answerKey",), id_fields=("id",),
                  choices_field="choices", grading=Grading.CHOICE, protocol=_MATH_1),
    # The built-in arithmetic task's held-out file, written by hpt_jax.data in the OpenR1 training schema.
    BenchmarkSpec(name="builtin", source="hpt_jax.data built-in arithmetic task (OpenR1 schema)",
                  question_fields=("prompt",), answer_fields=("reward_model.ground_truth",),
                  id_fields=("extra_info.index", "extra_info.id"),
                  level_fields=("extra_info.level", "level"), protocol=Protocol(num_samples=4,
                                                                                 max_new_tokens=256)),
)}

_SUFFIXES = (".jsonl", ".json", ".parquet")


def get_benchmark(name: str) -> BenchmarkSpec:
  """The spec registered under `name`; an unknown name raises listing the known ones."""
  try:
    return BENCHMARKS[name]
  except KeyError:
    raise ValueError(f"unknown benchmark {name!r}; known benchmarks: {', '.join(sorted(BENCHMARKS))}") \
        from None


def find_benchmark_file(data_dir: str | pathlib.Path, name: str) -> pathlib.Path:
  """Locates `<data_dir>/<name>.<ext>` or `<data_dir>/<name>/test.<ext>`; raises naming what was tried."""
  get_benchmark(name)
  root = pathlib.Path(data_dir)
  candidates = [root / f"{name}{s}" for s in _SUFFIXES] + [root / name / f"test{s}" for s in _SUFFIXES]
  for path in candidates:
    if path.is_file():
      return path
  raise FileNotFoundError(f"no file for benchmark {name!r}; tried: {', '.join(map(str, candidates))}")


def _read_rows(path: pathlib.Path) -> list[Any]:
  """Rows of a jsonl / json (list of objects) / parquet file; parse errors name the file and line."""
  if path.suffix == ".jsonl":
    rows = []
    with path.open(encoding="utf-8") as f:
      for line_no, line in enumerate(f, start=1):
        if not line.strip():
          continue
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}: line {line_no} is not valid JSON ({e.msg})") from None
    return rows
  if path.suffix == ".json":
    try:
      data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not valid JSON at line {e.lineno} ({e.msg})") from None
    if not isinstance(data, list):
      raise ValueError(f"{path}: expected a JSON list of row objects, got {type(data).__name__}")
    return data
  if path.suffix == ".parquet":
    import pyarrow.parquet as pq  # deferred: only parquet users pay the import
    try:
      return pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for a corrupt file
      raise ValueError(f"{path}: cannot read parquet ({e})") from None
  raise ValueError(f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(_SUFFIXES)}")


_MISSING = object()
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _lookup(row: Mapping, dotted: str) -> Any:
  value: Any = row
  for part in dotted.split("."):
    if not isinstance(value, Mapping) or part not in value:
      return _MISSING
    value = value[part]
  return value


def _first(row: Mapping, fields: Sequence[str]) -> Any:
  for field in fields:
    value = _lookup(row, field)
    if value is not _MISSING and value is not None:
      return value
  return _MISSING


def _as_text(value: Any, *, what: str) -> str:
  """A question or answer as a string; chat lists give their last user turn, integral floats drop '.0'."""
  if isinstance(value, list) and value and all(isinstance(m, Mapping) for m in value):
    users = [m.get("content") for m in value if m.get("role") == "user"]
    if not users or not isinstance(users[-1], str):
      raise ValueError(f"{what}: chat list has no user message with string content")
    return users[-1]
  if isinstance(value, bool):
    raise ValueError(f"{what}: expected text or a number, got a boolean")
  if isinstance(value, float):
    if not math.isfinite(value):
      raise ValueError(f"{what}: non-finite number {value}")
    # AMC answers are stored as floats (142.0); the verifier should see "142".
    return str(int(value)) if value.is_integer() else repr(value)
  if isinstance(value, int):
    return str(value)
  if isinstance(value, str):
    return value
  raise ValueError(f"{what}: expected text, got {type(value).__name__}")


def _inline_choices(question: str, choices: Any, *, what: str) -> str:
  if not (isinstance(choices, Mapping) and isinstance(choices.get("text"), list)
          and isinstance(choices.get("label"), list) and len(choices["text"]) == len(choices["label"])
          and choices["text"]):
    raise ValueError(f"{what}: choices must be {{'text': [...], 'label': [...]}} of equal, non-zero length")
  lines = [f"{_LETTERS[i]}. {text}" for i, text in enumerate(choices["text"])]
  return question.rstrip() + "\n" + "\n".join(lines)


def _choice_letter(key: str, choices: Any) -> str:
  """The option letter of an answer key; ARC keys some rows "1".."4", which become "A".."D"."""
  if isinstance(choices, Mapping) and key in choices.get("label", []):
    return _LETTERS[list(choices["label"]).index(key)]
  return key.strip().upper()


def _parse_row(spec: BenchmarkSpec, row: Any, *, index: int, where: str) -> Problem:
  what = f"{where}: row {index}"
  if not isinstance(row, Mapping):
    raise ValueError(f"{what}: expected an object, got {type(row).__name__}")
  question = _first(row, spec.question_fields)
  if question is _MISSING:
    raise ValueError(f"{what}: missing question field (one of {list(spec.question_fields)})")
  question = _as_text(question, what=f"{what} question")
  if spec.choices_field is not None:
    choices = _lookup(row, spec.choices_field)
    if choices is _MISSING:
      raise ValueError(f"{what}: missing choices field {spec.choices_field!r}")
    question = _inline_choices(question, choices, what=f"{what} {spec.choices_field}")
  answer = _first(row, spec.answer_fields)
  if answer is _MISSING:
    raise ValueError(f"{what}: missing answer field (one of {list(spec.answer_fields)})")
  if isinstance(answer, list) and not (answer and isinstance(answer[0], Mapping)):
    answer = tuple(_as_text(a, what=f"{what} answer") for a in answer)
    if not answer or not all(a.strip() for a in answer):
      raise ValueError(f"{what}: empty answer")
  else:
    answer = _as_text(answer, what=f"{what} answer")
    if not answer.strip():
      raise ValueError(f"{what}: empty answer")
  if not question.strip():
    raise ValueError(f"{what}: empty question")
  if spec.grading is Grading.CHOICE:
    if not isinstance(answer, str):
      raise ValueError(f"{what}: a multiple-choice answer must be one option, got {list(answer)}")
    choices = _lookup(row, spec.choices_field) if spec.choices_field is not None else None
    answer = _choice_letter(answer, choices)
    if len(answer) != 1 or answer not in _LETTERS:
      raise ValueError(f"{what}: multiple-choice answer must be an option letter, got {answer!r}")
  problem_id = _first(row, spec.id_fields)
  problem_id = str(index) if problem_id is _MISSING else _as_text(problem_id, what=f"{what} id")
  level = _first(row, spec.level_fields)
  level = None if level is _MISSING else _as_text(level, what=f"{what} level")
  return Problem(benchmark=spec.name, problem_id=problem_id, question=question, answer=answer, level=level)


def load_benchmark(name: str, path: str | pathlib.Path, *, limit: int | None = None) -> list[Problem]:
  """Reads a benchmark file in its public schema.

  Args:
    name: a key of `BENCHMARKS`.
    path: a .jsonl, .json (list of objects) or .parquet file.
    limit: keep only the first `limit` problems (quick validation runs).

  Returns:
    The problems in file order. Raises ValueError naming the file and row on any malformed row,
    and on duplicate problem ids (per-problem results are keyed by id).
  """
  spec = get_benchmark(name)
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"benchmark {name!r}: file {path} does not exist")
  rows = _read_rows(path)
  if limit is not None:
    rows = rows[:limit]
  problems = [_parse_row(spec, row, index=i, where=str(path)) for i, row in enumerate(rows)]
  if not problems:
    raise ValueError(f"{path}: benchmark {name!r} has no rows")
  seen: dict[str, int] = {}
  for i, p in enumerate(problems):
    if p.problem_id in seen:
      raise ValueError(f"{path}: row {i} repeats problem id {p.problem_id!r} of row {seen[p.problem_id]}")
    seen[p.problem_id] = i
  return problems
