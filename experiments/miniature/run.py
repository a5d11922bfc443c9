"""The paper's Table 2 in miniature, in one command (see mini_setup.py for what is trained).

  python experiments/miniature/run.py                    # full: 3 seeds (21 post-training runs)
  python experiments/miniature/run.py --reduced          # 1 seed, smaller budget (marked in RESULTS.md)
  python experiments/miniature/run.py --workdir /tmp/m   # elsewhere (default runs/miniature)
  python experiments/miniature/run.py --workers 1        # everything in this one process
  python experiments/miniature/run.py --report_only      # rewrite RESULTS.md from finished runs only

The command pretrains the base and evaluates it in this process, then post-trains and evaluates the
runs in `--workers` processes (default 2, one per core: a 32-row train step of the tiny model keeps
one core busy, so two processes finish the runs about twice as fast as one), which take the runs in
order by claiming them (a file per run under the workdir's claims/ directory of this invocation), and
finally writes experiments/miniature/RESULTS.md and plots/ from all of them. A persistent XLA
compilation cache under the workdir lets a process load the programs another (or an earlier
invocation) compiled. A rerun with the same workdir skips every run whose export and evaluation are
there (resumable). Wall time, CPU seconds (this process and the worker processes it waited for) and the
load average (sampled every 30 s) are recorded in RESULTS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

_HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))
import mini_eval  # noqa: E402
import mini_results  # noqa: E402
import mini_setup as ms  # noqa: E402

# A quick look at the whole pipeline: 1 seed, a quarter of the budget, a shorter pretraining.
REDUCED = dict(seeds=(0,), token_budget=8192, pretrain_steps=40, eval_per_level=32, eval_extra=0)
# The test's end-to-end run: a few steps of everything, seconds of compute each.
SMOKE = dict(seeds=(0,), gammas=(0,), methods=(ms.Method.HPT, ms.Method.SFT_GRPO), token_budget=1000,
             max_steps=24, validate_every=5, pretrain_steps=1, prompts=2, rollouts=4, pretrain_prompts=8,
             eval_per_level=2, eval_extra=2, eval_samples=2, response_len=24)


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


def _train(config, workdir: pathlib.Path) -> None:
  """Trains `config` into `workdir` unless its export exists; adds the seconds spent to the run's
  train_seconds.json (summed over invocations: a resumed run reports all its training time)."""
  from hpt_jax.training import loop  # deferred: heavy
  if _trained(workdir):
    return
  start = time.perf_counter()
  loop.train(config, workdir=workdir)
  seconds = time.perf_counter() - start
  path = workdir / "train_seconds.json"
  path.write_text(json.dumps(seconds + (json.loads(path.read_text()) if path.is_file() else 0.0)))


def _seconds(*workdirs: pathlib.Path) -> float:
  return sum(json.loads(p.read_text()) for d in workdirs if (p := d / "train_seconds.json").is_file())


def _tokens(workdir: pathlib.Path) -> int:
  """Training tokens of a finished run: real prompt + response tokens of the rows updated on."""
  from hpt_jax import reporting
  return int(sum(r.get("train/tokens", 0.0) for r in reporting.read_records(workdir / "metrics.jsonl")))


@dataclasses.dataclass(frozen=True)
class Paths:
  """Where one invocation's parts live under the workdir."""
  workdir: pathlib.Path

  @property
  def base(self) -> pathlib.Path:
    return self.workdir / "base"

  @property
  def pre_task(self) -> pathlib.Path:
    return self.workdir / "task_pretrain"

  @property
  def post_task(self) -> pathlib.Path:
    return self.workdir / "task_post"

  @property
  def eval_file(self) -> pathlib.Path:
    return self.workdir / "eval_heldout.parquet"

  def run(self, key: ms.RunKey) -> pathlib.Path:
    return self.workdir / key.name


def _log(t0: float):
  return lambda msg: print(f"[miniature {os.getpid()} {time.perf_counter() - t0:7.1f}s] {msg}", flush=True)


def _evaluate(spec: ms.Spec, paths: Paths, run_dir: pathlib.Path):
  return mini_eval.evaluate_export(run_dir / "hf_final", eval_file=paths.eval_file, out_dir=run_dir / "eval",
                                   samples=spec.eval_samples, prompt_len=spec.prompt_len,
                                   response_len=spec.response_len)


def _finished(spec: ms.Spec, paths: Paths, run_dir: pathlib.Path):
  return mini_eval.finished_results(run_dir / "eval", eval_file=paths.eval_file, samples=spec.eval_samples,
                                    response_len=spec.response_len)


def prepare(spec: ms.Spec, paths: Paths, log) -> None:
  """Pretrains the base, writes the held-out file, evaluates the base (each skipped when done)."""
  log(f"pretraining the base model (SFT on levels {spec.pretrain_levels}, {spec.pretrain_steps} steps)")
  _train(ms.pretrain_config(spec, task_dir=paths.pre_task), paths.base)
  if not paths.eval_file.is_file():
    # The post-training task is written here exactly as its runs' data source will (same config), so
    # the held-out file and the base's scores exist before any post-training run.
    from hpt_jax import data as data_lib  # deferred: heavy
    data_lib.materialize_builtin_task(paths.post_task, ms.builtin_task_config(
        ms.post_configs(spec, ms.all_runs(spec)[0], base_dir=paths.base / "hf_final", task_dir=paths.post_task)[0]))
    mini_eval.write_eval_file(paths.eval_file, levels=spec.post_levels, per_level=spec.eval_per_level,
                              extra=spec.eval_extra, train_files=[paths.pre_task / "train.parquet",
                                                                  paths.post_task / "train.parquet"])
  log(f"base model held-out avg@{spec.eval_samples}: {mini_eval.level_scores(_evaluate(spec, paths, paths.base))}")


def _claim(claim_dir: pathlib.Path | None, key: ms.RunKey) -> bool:
  """True when this process may train `key`: no claims (one process), or it created the claim file."""
  if claim_dir is None:
    return True
  try:
    os.close(os.open(claim_dir / key.name, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    return True
  except FileExistsError:
    return False  # another worker of this invocation has it


def post_train(spec: ms.Spec, paths: Paths, log, *, claim_dir: pathlib.Path | None = None) -> None:
  """Post-trains and evaluates every run not finished yet (with `claim_dir`: those this process claims)."""
  if not _trained(paths.base):
    raise FileNotFoundError(f"{paths.base}: pretrain the base first")
  for key in ms.all_runs(spec):
    run_dir = paths.run(key)
    if _finished(spec, paths, run_dir) is not None or not _claim(claim_dir, key):
      continue
    log(f"post-training {key.name}")
    configs = ms.post_configs(spec, key, base_dir=paths.base / "hf_final", task_dir=paths.post_task,
                              stage_dir=run_dir / "stage1" / "hf_final")
    if len(configs) == 2:  # SFT→GRPO: the SFT stage, then GRPO from its export with the rest of the budget
      _train(configs[0], run_dir / "stage1")
      configs = ms.post_configs(spec, key, base_dir=paths.base / "hf_final", task_dir=paths.post_task,
                                stage_dir=run_dir / "stage1" / "hf_final",
                                stage1_tokens=_tokens(run_dir / "stage1"))
      _train(configs[1], run_dir)
    else:
      _train(configs[0], run_dir)
    _evaluate(spec, paths, run_dir)
    log(f"finished {key.name}: {_tokens(run_dir) + _tokens(run_dir / 'stage1') if len(configs) == 2 else _tokens(run_dir)} tokens")


def _outcome(spec: ms.Spec, paths: Paths, key: ms.RunKey, results) -> mini_results.RunOutcome:
  run_dir = paths.run(key)
  if key.method is ms.Method.SFT_GRPO:
    stage1 = run_dir / "stage1"
    steps1, tokens1 = len(mini_results.read_curve(stage1)), _tokens(stage1)
    return mini_results.RunOutcome(key=key, results=results, tokens=tokens1 + _tokens(run_dir),
                                   records=mini_results.read_curve(stage1, run_dir, offset=steps1,
                                                                   token_offset=tokens1))
  return mini_results.RunOutcome(key=key, results=results, tokens=_tokens(run_dir),
                                 records=mini_results.read_curve(run_dir))


def report(spec: ms.Spec, paths: Paths, *, results_dir: pathlib.Path, usage: mini_results.Usage,
           reduced_note: str = "") -> pathlib.Path:
  """RESULTS.md and plots/ from the runs whose evaluation is complete (never trains or evaluates)."""
  base = _finished(spec, paths, paths.base)
  if base is None:
    raise FileNotFoundError(f"{paths.base}: no evaluated base to report on")
  runs, seconds = {}, {"base": _seconds(paths.base)}
  for key in ms.all_runs(spec):
    results = _finished(spec, paths, paths.run(key))
    if results is not None:  # unfinished runs (maybe another process's) are left alone
      runs[key.name] = _outcome(spec, paths, key, results)
      seconds[key.name] = _seconds(paths.run(key), paths.run(key) / "stage1")
  return mini_results.write(spec, runs=runs, base=base, results_dir=results_dir, seconds=seconds, usage=usage,
                            reduced_note=reduced_note)


def _spawn_workers(argv: list[str], n: int, claim_dir: pathlib.Path, loads: list[float], log) -> None:
  """Runs n worker processes (this script with --worker_claims) and waits, sampling the load average."""
  cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), *argv, "--worker_claims", str(claim_dir)]
  procs = [subprocess.Popen(cmd) for _ in range(n)]
  log(f"{n} worker processes: {[p.pid for p in procs]}")
  while any(p.poll() is None for p in procs):
    loads.append(os.getloadavg()[0])
    time.sleep(1.0 if len(loads) < 2 else 30.0)
  failed = [p.pid for p in procs if p.returncode != 0]
  if failed:
    raise RuntimeError(f"worker processes {failed} failed (see their output above); rerun to resume")


def run(spec: ms.Spec, *, workdir: pathlib.Path, results_dir: pathlib.Path, reduced_note: str = "",
        report_only: bool = False, workers: int = 1, argv: list[str] | None = None) -> pathlib.Path:
  """Pretrains the base, post-trains every run (in `workers` processes), evaluates, writes RESULTS.md.

  Args:
    argv: the spec flags (--reduced / --smoke / --workdir) the worker processes get; needed when
      workers > 1.
  """
  if workers < 1:
    raise ValueError(f"--workers must be >= 1, got {workers}")
  paths = Paths(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  use_compilation_cache(workdir / "xla_cache")
  t0, cpu0 = time.perf_counter(), cpu_seconds()
  log = _log(t0)
  loads = [os.getloadavg()[0]]
  if not report_only:
    prepare(spec, paths, log)
    loads.append(os.getloadavg()[0])
    if workers == 1:
      post_train(spec, paths, log)
    else:
      claim_dir = workdir / "claims" / f"{time.strftime('%Y%m%dT%H%M%S')}_{os.getpid()}"
      claim_dir.mkdir(parents=True)
      _spawn_workers(list(argv or []), workers, claim_dir, loads, log)
    loads.append(os.getloadavg()[0])
  usage = mini_results.Usage(wall_s=time.perf_counter() - t0, cpu_s=cpu_seconds() - cpu0,
                             load_min=min(loads), load_max=max(loads), workers=workers)
  usage_file = workdir / "usage.json"  # the last training invocation's cost, for later reports
  if not report_only:
    usage_file.write_text(json.dumps(dataclasses.asdict(usage)))
  elif usage_file.is_file():
    usage = dataclasses.replace(mini_results.Usage(**json.loads(usage_file.read_text())), regenerated=True)
  path = report(spec, paths, results_dir=results_dir, usage=usage, reduced_note=reduced_note)
  log(f"done: {path} ({usage.wall_s / 60:.1f} min wall, {usage.cpu_s / 60:.1f} CPU-min)")
  return path


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("runs/miniature"))
  parser.add_argument("--results_dir", type=pathlib.Path, default=_HERE)
  parser.add_argument("--reduced", action="store_true", help=f"a reduced run: {REDUCED}")
  parser.add_argument("--smoke", action="store_true", help="a seconds-long smoke run (tests)")
  parser.add_argument("--report_only", action="store_true",
                      help="train nothing; rewrite RESULTS.md from the runs already finished in --workdir")
  parser.add_argument("--workers", type=int, default=2,
                      help="processes that post-train the runs side by side (1: all in this process)")
  parser.add_argument("--worker_claims", type=pathlib.Path, default=None,
                      help="(internal) run as a worker: post-train the runs claimed in this directory")
  args = parser.parse_args(argv)
  spec, note = ms.Spec(), ""
  if args.reduced:
    spec, note = dataclasses.replace(spec, **REDUCED), f"REDUCED run ({REDUCED}), not the full protocol"
  if args.smoke:
    spec, note = dataclasses.replace(spec, **SMOKE), "SMOKE run (a test of the pipeline; numbers mean nothing)"
  workdir = args.workdir.absolute()
  if args.worker_claims is not None:
    use_compilation_cache(workdir / "xla_cache")
    post_train(spec, Paths(workdir), _log(time.perf_counter()), claim_dir=args.worker_claims)
    return
  worker_argv = ["--workdir", str(workdir)] + ["--reduced"] * args.reduced + ["--smoke"] * args.smoke
  run(spec, workdir=workdir, results_dir=args.results_dir, reduced_note=note, report_only=args.report_only,
      workers=args.workers, argv=worker_argv)


if __name__ == "__main__":
  main()
