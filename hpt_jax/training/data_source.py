"""The loop's view of its data, built from the data package: questions in a resumable order, rewards,
held-out problems for validation.

`TrainingData` wraps a `data.TokenizedDataset` (templated prompt ids, demonstrations with EOS) and a
host-sharded `data.EpochSampler`. Each host draws its own shard of every step's question indices;
the shards are gathered so that every host holds the same global list (in the order a single-host
sampler of the global batch size yields), which keeps the gate's decisions, and hence batch shapes,
identical on every process. The sampler's small state dict goes into every checkpoint.

`load_training_data(config, workdir)` builds it from `config.data`: the OpenR1-schema file it names,
or the built-in arithmetic task materialised under the workdir (train file, held-out files and its
locally trained tokenizer).
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from hpt_jax import data as data_lib
from hpt_jax.evaluation import benchmarks as bm
from hpt_jax.training import distributed
from hpt_jax.training.config import TrainConfig
from hpt_jax.training.overrides import ConfigError
from hpt_jax.training.rollout_phase import Question

Scorer = Callable[[list[str], list[Any]], tuple[np.ndarray, int]]


class TrainingData:
  """Tokenised questions with a resumable host-sharded order, a reward scorer and held-out problems.

  Args:
    dataset: the tokenised training set.
    tokenizer: its `transformers` tokenizer.
    tokenizer_dir: the tokenizer's directory (copied into HF exports), or None.
    template: how questions are rendered into prompts (validation renders with it too).
    batch_size: questions per step (global).
    shuffle_seed: the sampler's seed.
    scorer: `(responses, ground_truths) -> (scores [N], timeouts)`.
    held_out: validation problems (never trained on).
    reward_pool: what the validation grader scores with (a `RewardPool`), or None (serial).
    close: called when the run ends (stops the reward pool).
  """

  def __init__(self, *, dataset: data_lib.TokenizedDataset, tokenizer: Any, tokenizer_dir: pathlib.Path | None,
               template: data_lib.PromptTemplate, batch_size: int, shuffle_seed: int, scorer: Scorer,
               held_out: Sequence[bm.Problem] = (), reward_pool: Any = None,
               close: Callable[[], None] | None = None):
    self.dataset = dataset
    self.tokenizer = tokenizer
    self.tokenizer_dir = tokenizer_dir
    self.template = template
    self.reward_pool = reward_pool
    self.held_out = list(held_out)
    self._scorer = scorer
    self._close = close
    if tokenizer.eos_token_id is None:
      raise ConfigError("model.tokenizer_dir: the tokenizer has no EOS token")
    self.eos_ids = (int(tokenizer.eos_token_id),)
    self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0])
    count = jax.process_count()
    if batch_size % count:
      raise ConfigError(f"batch.prompts_per_step={batch_size} is not divisible by the {count} processes")
    if len(dataset) < batch_size:
      raise ConfigError(f"batch.prompts_per_step={batch_size} exceeds the {len(dataset)} training questions")
    self._sampler_args = dict(batch_size=batch_size // count, process_index=jax.process_index(),
                              process_count=count)
    self.sampler = data_lib.EpochSampler(num_examples=len(dataset), seed=shuffle_seed, **self._sampler_args)

  @property
  def num_questions(self) -> int:
    return len(self.dataset)

  def question(self, index: int) -> Question:
    demo = self.dataset.target_tokens[index]
    return Question(index=int(index), prompt=self.dataset.prompt_tokens[index],
                    demo=demo if len(demo) else None, ground_truth=self.dataset.ground_truths[index])

  def next_batch(self) -> list[Question]:
    """The step's questions, the same global list on every host."""
    local = np.asarray(next(self.sampler), np.int64)
    return [self.question(i) for i in distributed.allgather_blocks(local)]

  def state_dict(self) -> dict:
    return self.sampler.state_dict()

  def load_state_dict(self, state: dict) -> None:
    try:
      self.sampler = data_lib.EpochSampler.from_state(state, num_examples=self.num_questions,
                                                      **self._sampler_args)
    except (KeyError, ValueError) as e:
      raise ConfigError(f"data: the checkpoint's data position does not fit this run ({e}); resume with the "
                        "same data and batch flags") from e

  def render(self, question: str) -> str:
    """Question text -> prompt text, exactly as training prompts are rendered."""
    return data_lib.render_text(self.template, self.tokenizer, [data_lib.Message("user", question)])

  def score(self, responses: list[str], truths: list[Any]) -> tuple[np.ndarray, int]:
    return self._scorer(responses, truths)

  def validation_problems(self, count: int) -> list[bm.Problem]:
    if not self.held_out:
      raise ConfigError("validation.file: this data source has no held-out problems; set validation.file")
    return self.held_out[:count]

  def close(self) -> None:
    if self._close is not None:
      self._close()


def pool_scorer(pool: Any) -> Scorer:
  """A scorer over the rewards package's `RewardPool` (per-answer timeouts, counted)."""
  def score(responses: list[str], truths: list[Any]) -> tuple[np.ndarray, int]:
    result = pool.score(responses, truths)
    return np.asarray(result.scores, np.float64), int(result.counts().get("timeout", 0))
  return score


def _balanced_held_out(path: pathlib.Path, count: int) -> list[bm.Problem]:
  """`count` held-out built-in problems spread evenly over the levels (the file is sorted by level)."""
  problems = bm.load_benchmark("builtin", path)
  by_level: dict[str | None, list[bm.Problem]] = {}
  for p in problems:
    by_level.setdefault(p.level, []).append(p)
  out, k = [], 0
  while len(out) < min(count, len(problems)):
    for level in sorted(by_level, key=str):
      if k < len(by_level[level]) and len(out) < count:
        out.append(by_level[level][k])
    k += 1
  return out


def load_training_data(config: TrainConfig, workdir: pathlib.Path, *, scorer: Scorer | None = None) -> TrainingData:
  """Builds the run's `TrainingData` from `config.data` (a file, or the built-in task).

  Args:
    config: the run.
    workdir: where the built-in task is written (unless `data.builtin_dir` says otherwise).
    scorer: rewards of the training rollouts; None scores with the verifier in the reward pool
      (which validation grades with in any case).
  """
  from hpt_jax.data.tokenizer import load_tokenizer
  from hpt_jax.rewards.pool import RewardPool

  cfg = config.data
  held_out: list[bm.Problem] = []
  if cfg.train_file is None:
    per_level = max(1, cfg.builtin_problems // len(cfg.builtin_levels))
    task = data_lib.materialize_builtin_task(cfg.builtin_dir or workdir / "builtin_task", data_lib.BuiltinTaskConfig(
        seed=cfg.builtin_seed, levels=cfg.builtin_levels, train_per_level=per_level,
        eval_per_level=max(1, config.validation.num_problems), vocab_size=config.model.config.vocab_size))
    train_file, tokenizer_dir = task.train_file, task.tokenizer_dir
    held_out = _balanced_held_out(task.eval_file, config.validation.num_problems)
  else:
    train_file = pathlib.Path(cfg.train_file)
    tokenizer_dir = config.model.tokenizer_dir or config.model.hf_dir
    if tokenizer_dir is None:
      raise ConfigError("model.tokenizer_dir: a data.train_file run needs a tokenizer (model.tokenizer_dir "
                        "or model.hf_dir)")
  if config.model.tokenizer_dir is not None:
    tokenizer_dir = config.model.tokenizer_dir
  tokenizer = load_tokenizer(tokenizer_dir)  # plain fast tokenizers without importing torch
  examples, _ = data_lib.load_openr1(train_file, max_bad_fraction=cfg.max_bad_fraction)
  dataset = data_lib.tokenize_examples(examples, tokenizer, template=cfg.template,
                                       max_prompt_length=cfg.max_prompt_length,
                                       max_response_length=cfg.max_response_length)
  pool = RewardPool(num_workers=cfg.reward_workers, timeout_s=cfg.reward_timeout_s)
  pool.start(wait=False)  # the workers start while the run compiles; the first score waits
  return TrainingData(dataset=dataset, tokenizer=tokenizer, tokenizer_dir=pathlib.Path(tokenizer_dir),
                      template=cfg.template, batch_size=config.batch.prompts_per_step,
                      shuffle_seed=cfg.shuffle_seed, scorer=scorer or pool_scorer(pool), held_out=held_out,
                      reward_pool=pool, close=pool.close)
