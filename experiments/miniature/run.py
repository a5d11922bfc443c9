"""The paper's Table 2 in miniature, in one command (see mini_setup.py for what is trained).

  python experiments/miniature/run.py                    # full: 3 seeds (21 post-training runs)
  python experiments/miniature/run.py --reduced          # 1 seed, fewer steps (marked in RESULTS.md)
  python experiments/miniature/run.py --workdir /tmp/m   # elsewhere (default runs/miniature)
  # On a shared machine: pretrain with the plain command, then split the runs over processes and
  # write RESULTS.md from all of them (how the committed full run was made):
  python experiments/miniature/run.py --workdir W --shard 0/2 --results_dir /tmp/r0 &  # and 1/2
  python experiments/miniature/run.py --workdir W --report_only

Everything runs in this one process, and a persistent XLA compilation cache under the workdir lets a
run load the programs an earlier run (or invocation) compiled. A rerun with the same workdir skips
every run whose export and evaluation are already there (resumable), then rewrites
experiments/miniature/RESULTS.md and experiments/miniature/plots/. Process CPU seconds (this process
and its reward workers) and the load average are recorded next to wall time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import resource
import sys
import time

_HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))
import mini_eval  # noqa: E402
import mini_results  # noqa: E402
import mini_setup as ms  # noqa: E402

# The committed first run's settings (constant lr, 32 held-out problems per level, no extra ones).
REDUCED = dict(seeds=(0,), steps=8, pretrain_steps=80, eval_samples=4, lr=1e-3, constant_lr=True,
               eval_per_level=32, eval_extra=0)
# The test's end-to-end run: a few steps of everything, seconds of compute each.
SMOKE = dict(seeds=(0,), gammas=(0,), methods=(ms.Method.HPT, ms.Method.GRPO), steps=2, pretrain_steps=1,
             prompts=2, rollouts=4, pretrain_prompts=8, eval_per_level=2, eval_extra=2, eval_samples=2,
             response_len=24)


def cpu_seconds() -> float:
  """User + system CPU seconds of this process and of its finished children (reward workers)."""
  own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
  return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def use_compilation_cache(directory: pathlib.Path) -> None:
  """Persists compiled XLA programs: each post-training run rebuilds its jitted step, which would
  otherwise recompile the same programs 21 times."""
  import jax  # deferred: heavy
  jax.config.update("jax_compilation_cache_dir", str(directory))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def _trained(workdir: pathlib.Path) -> bool:
  return (workdir / "hf_final" / "config.json").is_file()


def _train(config, workdir: pathlib.Path) -> float:
  """Trains `config` into `workdir` unless its export exists; returns the seconds spent."""
  from hpt_jax.training import loop  # deferred: heavy
  if _trained(workdir):
    return 0.0
  start = time.perf_counter()
  loop.train(config, workdir=workdir)
  return time.perf_counter() - start


def _tokens(workdir: pathlib.Path) -> float:
  """Tokens the train step processed (real prompt + response tokens, summed over steps)."""
  from hpt_jax import reporting
  records = reporting.read_records(workdir / "metrics.jsonl")
  return float(sum(r.get("perf/training_tokens_per_s", 0.0) * r.get("perf/training_seconds", 0.0)
                   for r in records))


def run(spec: ms.Spec, *, workdir: pathlib.Path, results_dir: pathlib.Path, reduced_note: str = "",
        report_only: bool = False, shard: tuple[int, int] = (0, 1)) -> pathlib.Path:
  """Pretrains the base, post-trains every run, evaluates, writes RESULTS.md; returns its path.

  With `report_only`, trains and evaluates nothing: RESULTS.md is rewritten from the runs whose
  evaluation is complete.
  `shard` = (i, N) post-trains only every N-th run starting at the i-th (processes sharing one
  workdir, each with its own results_dir; one `report_only` invocation then writes the whole table).
  The base must then exist already (every shard would otherwise pretrain it).
  """
  index, num_shards = shard
  if not 0 <= index < num_shards:
    raise ValueError(f"--shard: need 0 <= i < N, got {index}/{num_shards}")
  workdir.mkdir(parents=True, exist_ok=True)
  use_compilation_cache(workdir / "xla_cache")
  wall, cpu0 = time.perf_counter(), cpu_seconds()
  loads: list[float] = []
  log = lambda msg: print(f"[miniature {time.perf_counter() - wall:7.1f}s] {msg}", flush=True)
  pre_task, post_task = workdir / "task_pretrain", workdir / "task_post"
  base_dir = workdir / "base"
  log("pretraining the base model (SFT on levels "
      f"{spec.pretrain_levels}, {spec.pretrain_steps} steps)")
  if report_only and not _trained(base_dir):
    raise FileNotFoundError(f"{base_dir}: no pretrained base to report on")
  if num_shards > 1 and not _trained(base_dir):
    raise FileNotFoundError(f"{base_dir}: pretrain the base first (run without --shard) before sharding")
  seconds_file = workdir / ("seconds.json" if num_shards == 1 else f"seconds_shard{index}of{num_shards}.json")
  seconds = json.loads(seconds_file.read_text()) if seconds_file.is_file() else {}
  if num_shards == 1:  # runs that sharded processes trained are reported with their times
    for f in sorted(workdir.glob("seconds_shard*.json")):
      for k, v in json.loads(f.read_text()).items():
        seconds.setdefault(k, v)
  seconds["base"] = seconds.get("base", 0.0) + _train(ms.pretrain_config(spec, task_dir=pre_task), base_dir)
  seconds_file.write_text(json.dumps(seconds, indent=1))
  loads.append(os.getloadavg()[0])
  eval_file = workdir / "eval_heldout.parquet"
  if not eval_file.is_file():
    # The post-training task is written here exactly as its runs' data source will (same config), so
    # the held-out file and the base's scores exist before any post-training run.
    from hpt_jax import data as data_lib  # deferred: heavy
    data_lib.materialize_builtin_task(post_task, ms.builtin_task_config(
        ms.post_configs(spec, ms.all_runs(spec)[0], base_dir=base_dir / "hf_final", task_dir=post_task)[0]))
    mini_eval.write_eval_file(eval_file, levels=spec.post_levels, per_level=spec.eval_per_level,
                              extra=spec.eval_extra, train_files=[pre_task / "train.parquet",
                                                                  post_task / "train.parquet"])

  def evaluate(run_dir: pathlib.Path):
    return mini_eval.evaluate_export(run_dir / "hf_final", eval_file=eval_file, out_dir=run_dir / "eval",
                                     samples=spec.eval_samples, prompt_len=spec.prompt_len,
                                     response_len=spec.response_len)

  base = evaluate(base_dir)
  log(f"base model held-out avg@{spec.eval_samples}: {mini_eval.level_scores(base)}")
  runs: dict[str, mini_results.RunOutcome] = {}
  path = None
  for key in ms.all_runs(spec)[index::num_shards]:
    run_dir = workdir / key.name
    if report_only and mini_eval.finished_results(
        run_dir / "eval", eval_file=eval_file, samples=spec.eval_samples, response_len=spec.response_len) is None:
      continue  # not finished (another process may be training or evaluating it): never touched here
    log(f"post-training {key.name}")
    configs = ms.post_configs(spec, key, base_dir=base_dir / "hf_final", task_dir=post_task,
                              stage_dir=run_dir / "stage1" / "hf_final")
    if len(configs) == 2:  # SFT→GRPO: the SFT stage, then GRPO from its export
      seconds[key.name] = seconds.get(key.name, 0.0) + _train(configs[0], run_dir / "stage1") + _train(
          configs[1], run_dir)
      tokens = _tokens(run_dir / "stage1") + _tokens(run_dir)
      curves = mini_results.read_curve(run_dir / "stage1", run_dir, offset=configs[0].total_steps)
    else:
      seconds[key.name] = seconds.get(key.name, 0.0) + _train(configs[0], run_dir)
      tokens = _tokens(run_dir)
      curves = mini_results.read_curve(run_dir)
    loads.append(os.getloadavg()[0])
    runs[key.name] = mini_results.RunOutcome(key=key, results=evaluate(run_dir), tokens=tokens, records=curves)
    # Rewritten after every run, so an interrupted sweep still reports what it finished.
    seconds_file.write_text(json.dumps(seconds, indent=1))
    usage = mini_results.Usage(wall_s=time.perf_counter() - wall, cpu_s=cpu_seconds() - cpu0,
                               load_min=min(loads), load_max=max(loads))
    path = mini_results.write(spec, runs=runs, base=base, results_dir=results_dir, seconds=seconds,
                              usage=usage, reduced_note=reduced_note)
  log(f"done: {path}")
  return path


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("runs/miniature"))
  parser.add_argument("--results_dir", type=pathlib.Path, default=_HERE)
  parser.add_argument("--reduced", action="store_true", help=f"a reduced run: {REDUCED}")
  parser.add_argument("--smoke", action="store_true", help="a seconds-long smoke run (tests)")
  parser.add_argument("--report_only", action="store_true",
                      help="train nothing; rewrite RESULTS.md from the runs already finished in --workdir")
  parser.add_argument("--shard", default="0/1",
                      help="i/N: post-train only every N-th run from the i-th (parallel processes, one workdir)")
  args = parser.parse_args(argv)
  spec, note = ms.Spec(), ""
  if args.reduced:
    spec, note = dataclasses.replace(spec, **REDUCED), f"REDUCED run ({REDUCED}), not the full protocol"
  if args.smoke:
    spec, note = dataclasses.replace(spec, **SMOKE), "SMOKE run (a test of the pipeline; numbers mean nothing)"
  shard = tuple(int(x) for x in args.shard.split("/"))
  run(spec, workdir=args.workdir.absolute(), results_dir=args.results_dir, reduced_note=note,
      report_only=args.report_only, shard=shard)


if __name__ == "__main__":
  main()
