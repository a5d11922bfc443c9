"""Materialises the built-in arithmetic task into a directory: train file, held-out files, tokenizer.

Layout (all files in the OpenR1 schema, read by `load_openr1`):
  <dir>/train.parquet                 every level mixed and shuffled
  <dir>/eval/builtin.parquet          the held-out problems of every level (what the evaluator reads)
  <dir>/eval/builtin_level<L>.parquet the held-out problems of level L
  <dir>/tokenizer/                    a `transformers` tokenizer directory (byte-level BPE, ChatML)
  <dir>/manifest.json                 the config it was built from; written last

Deterministic in the config; a directory whose manifest matches the config is reused as it is.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import random

from hpt_jax.data import arithmetic
from hpt_jax.data.openr1 import write_openr1
from hpt_jax.data.tokenizer import build_tokenizer

# Short on purpose: the tiny model's context is small, and every prompt carries this.
BUILTIN_SYSTEM_PROMPT = "Add the numbers; box the sum."
_FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True, kw_only=True)
class BuiltinTaskConfig:
  """What the built-in task is made of (every field changes the files)."""
  seed: int = 0
  levels: tuple[int, ...] = arithmetic.LEVELS
  train_per_level: int = 2000
  eval_per_level: int = 40
  vocab_size: int = 512
  system_prompt: str | None = BUILTIN_SYSTEM_PROMPT

  def __post_init__(self):
    bad = [lv for lv in self.levels if lv not in arithmetic.LEVELS]
    if bad or not self.levels:
      raise ValueError(f"BuiltinTaskConfig.levels must be a non-empty subset of {arithmetic.LEVELS}, got "
                       f"{self.levels}")
    if self.train_per_level < 1 or self.eval_per_level < 1:
      raise ValueError("BuiltinTaskConfig.train_per_level and eval_per_level must be >= 1")


@dataclasses.dataclass(frozen=True)
class BuiltinTask:
  """Paths of a materialised task."""
  root: pathlib.Path
  train_file: pathlib.Path
  eval_file: pathlib.Path
  eval_files: dict[int, pathlib.Path]
  tokenizer_dir: pathlib.Path
  config: BuiltinTaskConfig


def _paths(root: pathlib.Path, config: BuiltinTaskConfig) -> BuiltinTask:
  return BuiltinTask(
      root=root, train_file=root / "train.parquet", eval_file=root / "eval" / "builtin.parquet",
      eval_files={lv: root / "eval" / f"builtin_level{lv}.parquet" for lv in config.levels},
      tokenizer_dir=root / "tokenizer", config=config)


def _manifest(config: BuiltinTaskConfig) -> dict:
  return {"format_version": _FORMAT_VERSION, **dataclasses.asdict(config), "levels": list(config.levels)}


def _complete(task: BuiltinTask) -> bool:
  files = [task.train_file, task.eval_file, *task.eval_files.values(), task.tokenizer_dir / "tokenizer.json"]
  return all(f.is_file() for f in files)


def materialize_builtin_task(directory: str | pathlib.Path,
                             config: BuiltinTaskConfig = BuiltinTaskConfig()) -> BuiltinTask:
  """Writes (or reuses) the built-in task under `directory`; takes seconds.

  Raises:
    FileExistsError: `directory` holds a task built from a different config (never overwritten).
  """
  root = pathlib.Path(directory)
  task = _paths(root, config)
  manifest_path = root / "manifest.json"
  if manifest_path.is_file():
    existing = json.loads(manifest_path.read_text())
    if existing == _manifest(config) and _complete(task):
      return task
    if existing != _manifest(config):
      raise FileExistsError(f"{root} holds a built-in task made from another config: {existing}")
  root.mkdir(parents=True, exist_ok=True)

  train_rows, texts = [], []
  for level in config.levels:
    held_out = arithmetic.generate_distinct(seed=config.seed, level=level, count=config.eval_per_level)
    eval_rows = [arithmetic.to_openr1_row(p, index=i, split="test") for i, p in enumerate(held_out)]
    write_openr1(eval_rows, task.eval_files[level])
    train = arithmetic.generate(seed=config.seed, level=level, count=config.train_per_level,
                                exclude={p.question for p in held_out})
    train_rows.extend(train)
    texts += [p.question for p in train] + [p.demonstration for p in train]
  all_eval = [p for level in config.levels
              for p in arithmetic.generate_distinct(seed=config.seed, level=level, count=config.eval_per_level)]
  write_openr1([arithmetic.to_openr1_row(p, index=i, split="test") for i, p in enumerate(all_eval)],
               task.eval_file)
  random.Random(f"builtin-shuffle-{config.seed}").shuffle(train_rows)
  write_openr1([arithmetic.to_openr1_row(p, index=i, split="train") for i, p in enumerate(train_rows)],
               task.train_file)
  build_tokenizer(texts, task.tokenizer_dir, vocab_size=config.vocab_size, system_prompt=config.system_prompt)
  # Last and atomic: a manifest means every file above is complete (another process may be reading).
  tmp = manifest_path.with_name("manifest.json.tmp")
  tmp.write_text(json.dumps(_manifest(config), indent=1))
  tmp.replace(manifest_path)
  return task
