"""Reads training rows in the schema of LUFFY's OpenR1-Math-46k-8192 from a local parquet or jsonl file.

Schema of one row (PAPER.md §3 "Data"):
  prompt:        [{"role": "system", "content": ...}, {"role": "user", "content": question}]
  target:        [{"role": "assistant", "content": demonstration}]
  reward_model:  {"ground_truth": str | number | [str, ...], "style": ...}
  data_source:   str (optional)
  extra_info:    {"index": int, "level": int, ...} (optional; `level` is the difficulty when known)

System messages are dropped, as HPT's `prepare_train.py` does (`prompt[1:]`). A row that does not fit the
schema is skipped with its reason counted; the first few are reported by row number and id. When more
than `max_bad_fraction` of the rows are bad the load fails with that report, so a wrong file never turns
into silent zero rewards deep inside training.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import json
import logging
import pathlib
from collections.abc import Iterator, Mapping
from typing import Any

from hpt_jax.data.templates import Message

log = logging.getLogger(__name__)
_REPORTED_BAD_ROWS = 5


@dataclasses.dataclass(frozen=True)
class Example:
  """One usable training row.

  Attributes:
    id: `extra_info.index` (as a string) when present, else the row number.
    messages: the prompt without system messages; the last is the user question.
    target: the demonstration text (None when the load does not require targets).
    ground_truth: a string, or a tuple of acceptable strings.
    data_source: the row's `data_source` ("" when absent).
    level: difficulty level from `extra_info.level`, or -1 when unknown.
  """
  id: str
  messages: tuple[Message, ...]
  target: str | None
  ground_truth: str | tuple[str, ...]
  data_source: str
  level: int

  @property
  def question(self) -> str:
    return self.messages[-1].content


class BadRow(enum.Enum):
  """Why a row was skipped."""
  MALFORMED_PROMPT = "malformed prompt (not a non-empty chat list ending in a user message)"
  NON_STRING_CONTENT = "non-string message content"
  EMPTY_TARGET = "empty or missing target"
  MISSING_GROUND_TRUTH = "missing ground truth"
  INVALID_JSON = "line is not a JSON object"


class _Skip(Exception):
  def __init__(self, reason: BadRow):
    super().__init__(reason.value)
    self.reason = reason


@dataclasses.dataclass(frozen=True)
class LoadReport:
  """What a load kept and skipped.

  Attributes:
    path: the file read.
    total: rows in the file.
    kept: rows that became Examples.
    bad_counts: reason value -> number of skipped rows.
    first_bad: up to 5 `(row number, id, reason value)` of skipped rows, in file order.
  """
  path: str
  total: int
  kept: int
  bad_counts: Mapping[str, int]
  first_bad: tuple[tuple[int, str, str], ...]

  @property
  def bad(self) -> int:
    return self.total - self.kept

  def summary(self) -> str:
    lines = [f"{self.path}: kept {self.kept} of {self.total} rows, skipped {self.bad}"]
    lines += [f"  {n} x {reason}" for reason, n in sorted(self.bad_counts.items())]
    lines += [f"  row {row} (id {rid}): {reason}" for row, rid, reason in self.first_bad]
    return "\n".join(lines)


class BadDataError(ValueError):
  """Too many bad rows; `.report` holds the LoadReport."""

  def __init__(self, report: LoadReport, max_bad_fraction: float):
    super().__init__(f"more than {max_bad_fraction:.1%} of the rows are bad\n{report.summary()}")
    self.report = report


class FileFormat(enum.Enum):
  PARQUET = ".parquet"
  JSONL = ".jsonl"

  @classmethod
  def of(cls, path: pathlib.Path) -> FileFormat:
    suffix = ".jsonl" if path.suffix == ".json" else path.suffix
    try:
      return cls(suffix)
    except ValueError:
      raise ValueError(f"{path}: unsupported file type {path.suffix!r}; use .parquet or .jsonl") from None


def _rows_parquet(path: pathlib.Path) -> Iterator[Any]:
  import datasets  # noqa: PLC0415 -- heavy import, only when a parquet file is read.
  table = datasets.Dataset.from_parquet(str(path), keep_in_memory=True)
  yield from table


def _rows_jsonl(path: pathlib.Path) -> Iterator[Any]:
  # Line by line on purpose: `datasets` infers one arrow schema per file and aborts the whole load on a
  # single row of a different type -- exactly the bad rows this loader must skip and report.
  with path.open(encoding="utf-8") as f:
    for line in f:
      if not line.strip():
        continue
      try:
        yield json.loads(line)
      except json.JSONDecodeError:
        yield None


_READERS = {FileFormat.PARQUET: _rows_parquet, FileFormat.JSONL: _rows_jsonl}


def _messages(chat: Any) -> list[Message]:
  if not isinstance(chat, (list, tuple)) or not chat:
    raise _Skip(BadRow.MALFORMED_PROMPT)
  out = []
  for m in chat:
    if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or "content" not in m:
      raise _Skip(BadRow.MALFORMED_PROMPT)
    if not isinstance(m["content"], str):
      raise _Skip(BadRow.NON_STRING_CONTENT)
    out.append(Message(role=m["role"], content=m["content"]))
  return out


def _ground_truth(row: Mapping[str, Any]) -> str | tuple[str, ...]:
  reward_model = row.get("reward_model")
  gt = reward_model.get("ground_truth") if isinstance(reward_model, Mapping) else None
  if isinstance(gt, bool):
    raise _Skip(BadRow.MISSING_GROUND_TRUTH)
  if isinstance(gt, (int, float)):
    return str(gt)
  if isinstance(gt, str) and gt.strip():
    return gt
  if isinstance(gt, (list, tuple)) and gt and all(isinstance(g, str) and g.strip() for g in gt):
    return tuple(gt)
  raise _Skip(BadRow.MISSING_GROUND_TRUTH)


def _example(row: Any, row_number: int, require_target: bool) -> Example:
  if not isinstance(row, Mapping):
    raise _Skip(BadRow.INVALID_JSON)
  messages = [m for m in _messages(row.get("prompt")) if m.role != "system"]
  if not messages or messages[-1].role != "user" or not messages[-1].content.strip():
    raise _Skip(BadRow.MALFORMED_PROMPT)
  target = None
  targets = row.get("target")
  if require_target or targets:
    if not isinstance(targets, (list, tuple)) or not targets:
      raise _Skip(BadRow.EMPTY_TARGET)
    target_messages = _messages(targets)
    target = target_messages[0].content
    if not target.strip():
      raise _Skip(BadRow.EMPTY_TARGET)
  ground_truth = _ground_truth(row)
  return Example(id=_row_id(row, row_number), messages=tuple(messages), target=target,
                 ground_truth=ground_truth, data_source=str(row.get("data_source") or ""),
                 level=_level(row))


def _extra(row: Any) -> Mapping[str, Any]:
  extra = row.get("extra_info") if isinstance(row, Mapping) else None
  return extra if isinstance(extra, Mapping) else {}


def _row_id(row: Any, row_number: int) -> str:
  index = _extra(row).get("index")
  return str(index) if isinstance(index, (int, str)) and not isinstance(index, bool) else str(row_number)


def _level(row: Any) -> int:
  level = _extra(row).get("level")
  return int(level) if isinstance(level, int) and not isinstance(level, bool) else -1


def load_openr1(path: str | pathlib.Path, *, max_bad_fraction: float = 0.01,
                require_target: bool = True) -> tuple[list[Example], LoadReport]:
  """Loads and validates an OpenR1-schema file.

  Args:
    path: a `.parquet` or `.jsonl` (`.json` lines) file.
    max_bad_fraction: the load fails (BadDataError) when more than this fraction of rows are bad.
    require_target: rows without a demonstration are bad (HPT needs one per question); False for
      RL-only data, where a missing target is allowed (a present one is still validated).

  Returns:
    (examples, report).
  """
  path = pathlib.Path(path)
  if not 0.0 <= max_bad_fraction <= 1.0:
    raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
  if not path.is_file():
    raise FileNotFoundError(f"no training file at {path}")
  reader = _READERS[FileFormat.of(path)]
  examples, counts, first_bad, total = [], collections.Counter(), [], 0
  for row_number, row in enumerate(reader(path)):
    total += 1
    try:
      examples.append(_example(row, row_number, require_target))
    except _Skip as skip:
      counts[skip.reason.value] += 1
      if len(first_bad) < _REPORTED_BAD_ROWS:
        first_bad.append((row_number, _row_id(row, row_number), skip.reason.value))
  report = LoadReport(path=str(path), total=total, kept=len(examples), bad_counts=dict(counts),
                      first_bad=tuple(first_bad))
  if total == 0:
    raise ValueError(f"{path}: the file holds no rows")
  if report.bad > max_bad_fraction * total:
    raise BadDataError(report, max_bad_fraction)
  if report.bad:
    log.warning("skipped bad rows:\n%s", report.summary())
  return examples, report


def write_openr1(rows: list[Mapping[str, Any]], path: str | pathlib.Path) -> pathlib.Path:
  """Writes OpenR1-schema rows to `.parquet` or `.jsonl` (atomically: temp file, then rename)."""
  path = pathlib.Path(path)
  fmt = FileFormat.of(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp")
  if fmt is FileFormat.PARQUET:
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415
    pq.write_table(pa.Table.from_pylist(list(rows)), tmp)
  else:
    with tmp.open("w", encoding="utf-8") as f:
      for row in rows:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
  tmp.replace(path)
  return path
