"""Per-problem results on disk: one JSON line per finished problem, appended as problems finish.

The file is the unit of resume and of comparison: an interrupted evaluation reloads it and skips the
problems already there; `report.exclusive_solves` compares two runs' files problem by problem. A crash
can leave a half-written last line; `read_results` drops exactly that line (it was never finished) and
refuses any other damage, naming the file and line.

Layout under a run's output directory:
  <benchmark>.problems.jsonl   one `ProblemResult` per line
  <benchmark>.protocol.json    the protocol the lines were sampled with; a resume under a different
                               protocol is refused rather than mixing samples of two protocols.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
from collections.abc import Iterable, Mapping, Sequence

from hpt_jax.evaluation import benchmarks as bm
from hpt_jax.evaluation import metrics


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProblemResult:
  """Outcome of all samples of one problem.

  Attributes:
    benchmark, problem_id, level, answer: copied from the `Problem`.
    correct: [n] per-sample correctness.
    responses: [n] decoded responses (kept so graders can be re-run; may be empty to save space).
    response_lengths: [n] response lengths in tokens.
    truncated: [n] True where the sample hit max_new_tokens without EOS.
  """
  benchmark: str
  problem_id: str
  level: str | None
  answer: str | tuple[str, ...]
  correct: tuple[bool, ...]
  responses: tuple[str, ...] = ()
  response_lengths: tuple[int, ...] = ()
  truncated: tuple[bool, ...] = ()

  @property
  def num_samples(self) -> int:
    return len(self.correct)

  @property
  def num_correct(self) -> int:
    return sum(self.correct)

  def to_json(self) -> dict:
    row = dataclasses.asdict(self)
    row["answer"] = list(self.answer) if isinstance(self.answer, tuple) else self.answer
    return row

  @classmethod
  def from_json(cls, row: Mapping) -> "ProblemResult":
    answer = row["answer"]
    return cls(benchmark=str(row["benchmark"]), problem_id=str(row["problem_id"]), level=row.get("level"),
               answer=tuple(answer) if isinstance(answer, list) else answer,
               correct=tuple(bool(c) for c in row["correct"]),
               responses=tuple(row.get("responses", ())),
               response_lengths=tuple(int(x) for x in row.get("response_lengths", ())),
               truncated=tuple(bool(x) for x in row.get("truncated", ())))


def results_path(output_dir: str | pathlib.Path, benchmark: str) -> pathlib.Path:
  return pathlib.Path(output_dir) / f"{benchmark}.problems.jsonl"


def protocol_path(output_dir: str | pathlib.Path, benchmark: str) -> pathlib.Path:
  return pathlib.Path(output_dir) / f"{benchmark}.protocol.json"


def read_results(path: str | pathlib.Path) -> list[ProblemResult]:
  """Results in a per-problem file ([] if it does not exist); a torn final line is dropped with a warning."""
  path = pathlib.Path(path)
  if not path.exists():
    return []
  text = path.read_text(encoding="utf-8")
  # Only the last line can be torn by a crash mid-append, and then the file does not end with "\n".
  torn_tail = bool(text) and not text.endswith("\n")
  lines = text.splitlines()
  if torn_tail:
    # Dropped even if it happens to parse: `ResultWriter` cuts the same line, so both agree on what is done.
    logging.warning("%s: dropping unfinished last line %d", path, len(lines))
    lines = lines[:-1]
  out = []
  for line_no, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      out.append(ProblemResult.from_json(json.loads(line)))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
      raise ValueError(f"{path}: line {line_no} is not a valid problem result ({e})") from None
  return out


class ResultWriter:
  """Appends `ProblemResult`s to a benchmark's file, flushing each line so a crash loses at most one.

  Opening checks the stored protocol: a file written under another protocol is refused.
  """

  def __init__(self, output_dir: str | pathlib.Path, benchmark: str, protocol: bm.Protocol):
    self.path = results_path(output_dir, benchmark)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    proto_file = protocol_path(output_dir, benchmark)
    wanted = dataclasses.asdict(protocol)
    if proto_file.exists():
      stored = json.loads(proto_file.read_text())
      if stored != wanted:
        raise ValueError(f"{self.path} was sampled with protocol {stored}, not {wanted}; use another "
                         "output directory or delete the old results")
    else:
      proto_file.write_text(json.dumps(wanted, indent=2) + "\n")
    self._drop_torn_tail()
    self._file = self.path.open("a", encoding="utf-8")

  def _drop_torn_tail(self) -> None:
    # Appending after a torn line would glue two records together; cut the file back to its last "\n".
    if not self.path.exists():
      return
    data = self.path.read_bytes()
    if data and not data.endswith(b"\n"):
      self.path.write_bytes(data[:data.rfind(b"\n") + 1])

  def write(self, result: ProblemResult) -> None:
    self._file.write(json.dumps(result.to_json()) + "\n")
    self._file.flush()
    os.fsync(self._file.fileno())

  def close(self) -> None:
    self._file.close()

  def __enter__(self) -> "ResultWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def score_results(benchmark: str, results: Sequence[ProblemResult]) -> metrics.BenchmarkScore:
  """avg@k and pass@k of a benchmark from its per-problem results."""
  return metrics.score_benchmark(benchmark=benchmark, num_samples=[r.num_samples for r in results],
                                 num_correct=[r.num_correct for r in results])


def load_run(output_dir: str | pathlib.Path,
             benchmarks: Iterable[str] | None = None) -> dict[str, list[ProblemResult]]:
  """Per-problem results of a finished run, by benchmark (all `*.problems.jsonl` files by default)."""
  output_dir = pathlib.Path(output_dir)
  if benchmarks is None:
    benchmarks = sorted(p.name[:-len(".problems.jsonl")] for p in output_dir.glob("*.problems.jsonl"))
  out = {}
  for name in benchmarks:
    path = results_path(output_dir, name)
    if not path.exists():
      raise FileNotFoundError(f"run {output_dir} has no results for benchmark {name!r} ({path})")
    out[name] = read_results(path)
  return out
