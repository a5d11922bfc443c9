r"""`python -m hpt_jax.evaluate`: evaluate a model on benchmarks under the paper's protocol.

Example:
  python -m hpt_jax.evaluate --hf_dir=/ckpt/hpt-7b --data_dir=/data/eval \
      --benchmarks=aime24,aime25,amc,math500,minerva,olympiadbench --output_dir=/runs/hpt-7b-eval

Compare finished runs (no model; Table 2 rows, Fig. 2 lines, Table 4 vs the first run):
  python -m hpt_jax.evaluate --compare=HPT=/runs/hpt,GRPO=/runs/grpo --output_dir=/runs/compare

Files are `<data_dir>/<name>.{jsonl,json,parquet}` (or `<data_dir>/<name>/test.*`) in the benchmark's
public schema. Outputs in --output_dir: `<benchmark>.problems.jsonl` (per-problem results, the resume
point), `results.md` / `results.json` (Table 2 layout), `pass_at_k.png`. Rerunning with the same flags
after an interruption continues where it stopped.
"""

from __future__ import annotations

import pathlib

from absl import app
from absl import flags
from absl import logging

# Trained runs are evaluated through the HF directories the trainer exports (best and final model);
# reading orbax training checkpoints directly would tie this tool to the train-state layout.
_HF_DIR = flags.DEFINE_string("hf_dir", None, "HF save_pretrained directory (weights + tokenizer).")
_BENCHMARKS = flags.DEFINE_list("benchmarks", None, "Benchmark names, e.g. aime24,math500.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Directory holding the benchmark files.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where results, tables and plots go.")
_RUN_NAME = flags.DEFINE_string("run_name", None, "Row label in the table (default: the model dir name).")
_TEMPERATURE = flags.DEFINE_float("temperature", None, "Override the protocol temperature (paper: 0.6).")
_TOP_P = flags.DEFINE_float("top_p", None, "Override the protocol top-p (paper: 0.95).")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", None, "Override max new tokens (paper: 8192).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", None, "Override n (paper: 32 AIME/AMC, else 1).")
_LIMIT = flags.DEFINE_integer("limit", None, "Evaluate only the first N problems of each benchmark.")
_BATCH_ROWS = flags.DEFINE_integer("batch_rows", 64, "Sampled rows per sampler call.")
_SEED = flags.DEFINE_integer("seed", 42, "Base sampling seed.")
_PROMPT_BUCKETS = flags.DEFINE_list("prompt_buckets", ["64", "128", "256", "512", "1024", "2048"],
                                    "Static prompt lengths of the sampler.")
_RESPONSE_BUCKETS = flags.DEFINE_list("response_buckets", ["64", "256", "1024", "4096", "8192"],
                                      "Static response lengths of the sampler.")
_PROMPT_STYLE = flags.DEFINE_enum(
    "prompt_style", "harness", ["harness", "chat", "llama_zero"],
    "harness: chat template + 'Please reason step by step...' system message (the paper's evaluation); "
    "chat: the training chat template (its default system prompt, e.g. the built-in task's); "
    "llama_zero: HPT's Llama zero prompt for base Llama checkpoints.")
_COMPARE = flags.DEFINE_list(
    "compare", None, "name=output_dir pairs of finished runs to compare instead of evaluating a model.")
_REWARD_WORKERS = flags.DEFINE_integer("reward_workers", 4, "Grading processes (0: grade in-process).")
_REWARD_TIMEOUT = flags.DEFINE_float("reward_timeout_s", 10.0, "Per-answer grading timeout.")


def _compare() -> None:
  from hpt_jax.evaluation import compare
  runs = {}
  for item in _COMPARE.value:
    name, sep, path = item.partition("=")
    if not sep or not name or not path:
      raise app.UsageError(f"--compare entries are name=output_dir, got {item!r}")
    runs[name] = path
  try:
    paths = compare.compare_runs(runs, _OUTPUT_DIR.value)
  except (ValueError, FileNotFoundError) as e:
    raise app.UsageError(str(e)) from None
  print(paths.table_md.read_text())
  print(f"table: {paths.table_md}\njson: {paths.table_json}\nplot: {paths.plot}\n"
        f"exclusive solves: {paths.exclusive_md}")


def main(argv):
  del argv
  if _COMPARE.value:
    if not _OUTPUT_DIR.value:
      raise app.UsageError("--output_dir is required")
    _compare()
    return
  for flag in (_HF_DIR, _BENCHMARKS, _DATA_DIR, _OUTPUT_DIR):
    if not flag.value:
      raise app.UsageError(f"--{flag.name} is required")
  # Deferred imports: flag errors above return before JAX starts.
  from hpt_jax import evaluation
  from hpt_jax import sampling
  from hpt_jax.evaluation import build
  from hpt_jax.rewards import pool as pool_lib

  # Benchmarks are resolved and parsed before the model loads, so a bad name or file fails in seconds.
  try:
    jobs = [evaluation.make_job(
        name, evaluation.find_benchmark_file(_DATA_DIR.value, name), limit=_LIMIT.value,
        temperature=_TEMPERATURE.value, top_p=_TOP_P.value, max_new_tokens=_MAX_NEW_TOKENS.value,
        num_samples=_NUM_SAMPLES.value) for name in _BENCHMARKS.value]
  except (ValueError, FileNotFoundError) as e:
    raise app.UsageError(str(e)) from None
  buckets = sampling.Buckets(prompt=tuple(int(x) for x in _PROMPT_BUCKETS.value),
                             response=tuple(int(x) for x in _RESPONSE_BUCKETS.value))
  loaded = build.load_hf_model(_HF_DIR.value)
  output_dir = pathlib.Path(_OUTPUT_DIR.value)
  run_name = _RUN_NAME.value or pathlib.Path(_HF_DIR.value).resolve().name
  pool = pool_lib.RewardPool(num_workers=_REWARD_WORKERS.value, timeout_s=_REWARD_TIMEOUT.value) \
      if _REWARD_WORKERS.value > 0 else None
  try:
    evaluator = build.build_evaluator(loaded, prompt_style=build.PromptStyle(_PROMPT_STYLE.value),
                                      buckets=buckets, batch_rows=_BATCH_ROWS.value, seed=_SEED.value,
                                      pool=pool)
    scores = evaluator.evaluate(loaded.params, jobs, output_dir=output_dir)
  finally:
    if pool is not None:
      pool.close()
  paths = evaluation.write_report(scores, output_dir, run_name=run_name)
  logging.info("evaluation done")
  print(paths.table_md.read_text())
  print(f"table: {paths.table_md}\njson: {paths.table_json}\nplot: {paths.plot}\n"
        f"per-problem results: {paths.results_dir}/<benchmark>.problems.jsonl")


if __name__ == "__main__":
  app.run(main)
