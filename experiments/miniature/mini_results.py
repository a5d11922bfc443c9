"""RESULTS.md of the miniature: Table 2 (mean ± std over seeds), Table 4 (exclusive solves by level),
Table 6 (the γ ablation), and the plots.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import pathlib
from typing import Mapping, Sequence

import numpy as np

import mini_eval
import mini_setup as ms
from hpt_jax import reporting
from hpt_jax.evaluation import exclusive_solves
from hpt_jax.evaluation.results import ProblemResult
from hpt_jax.reporting import curves


@dataclasses.dataclass(frozen=True)
class RunOutcome:
  key: ms.RunKey
  results: list[ProblemResult]
  tokens: float  # trained tokens
  records: list[dict]  # the training metrics (both stages for SFT→GRPO, steps continued)


TOKENS_TOTAL = "train/tokens_total"

# RESULTS.md from this line on is written by hand and kept when the tables are regenerated.
ANALYSIS_MARKER = "<!-- analysis: written by hand below this line; kept when the tables above are regenerated -->"


@dataclasses.dataclass(frozen=True)
class Usage:
  """What one invocation cost: wall and CPU seconds (this process + finished children), load average."""
  wall_s: float
  cpu_s: float
  load_min: float  # 1-minute load average, sampled every 30 s while the workers ran
  load_max: float
  workers: int = 1  # post-training processes side by side
  # True when the tables were rewritten by --report_only: the figures are then the last training
  # invocation's (saved in the workdir's usage.json), not the report's own.
  regenerated: bool = False


def read_curve(*dirs: pathlib.Path, offset: int = 0, token_offset: float = 0.0) -> list[dict]:
  """The metrics of one run; a second directory's steps continue after `offset` and its
  `train/tokens_total` after `token_offset` (SFT→GRPO: the GRPO stage counts from its own start)."""
  out = reporting.read_records(dirs[0] / "metrics.jsonl")
  for d in dirs[1:]:
    out += [{**r, "step": r["step"] + offset,
             **({TOKENS_TOTAL: r[TOKENS_TOTAL] + token_offset} if TOKENS_TOTAL in r else {})}
            for r in reporting.read_records(d / "metrics.jsonl")]
  return out


def _mean_std(values: Sequence[float]) -> str:
  v = 100 * np.asarray(values, np.float64)
  return f"{v.mean():.1f} ± {v.std():.1f}" if v.size > 1 else f"{v.mean():.1f}"


def standard_errors(results: Sequence[ProblemResult]) -> dict[str, float]:
  """Per level and "all": the standard error of avg@k over problems, std(fraction, ddof=1)/sqrt(N)."""
  by_level = collections.defaultdict(list)
  for r in results:
    by_level[str(r.level)].append(r.num_correct / r.num_samples)
    by_level["all"].append(r.num_correct / r.num_samples)
  return {k: float(np.std(v, ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")
          for k, v in sorted(by_level.items())}


def _se_line(outcomes: Sequence[Sequence[ProblemResult]], levels: Sequence[str]) -> str:
  """The range over runs of the one-seed standard error per level, in points."""
  ses = [standard_errors(r) for r in outcomes]
  cells = [f"level {k}: {100 * min(s[k] for s in ses):.1f}–{100 * max(s[k] for s in ses):.1f}"
           for k in (*levels, "all")]
  return "; ".join(cells)


def _levels(results: Sequence[ProblemResult]) -> list[str]:
  return [k for k in mini_eval.level_scores(results) if k != "all"]


def _score_row(label: str, outcomes: Sequence[RunOutcome] | None, base: Sequence[ProblemResult] | None,
               levels: Sequence[str]) -> str:
  if outcomes is None:
    scores = [mini_eval.level_scores(base)]
    tokens = "—"
    off = "—"
    steps = "—"
  else:
    scores = [mini_eval.level_scores(o.results) for o in outcomes]
    tokens = f"{np.mean([o.tokens for o in outcomes]):,.0f}"
    steps = f"{np.mean([len(o.records) for o in outcomes]):.0f}"
    ratios = [curves.series(o.records, curves.OFF_RATIO).values.mean() for o in outcomes
              if curves.series(o.records, curves.OFF_RATIO).values.size]
    off = f"{np.mean(ratios):.3f}" if ratios else "—"
  cells = [_mean_std([s[k] for s in scores]) for k in (*levels, "all")]
  return f"| {label} | " + " | ".join(cells) + f" | {tokens} | {steps} | {off} |"


def _table(rows: Sequence[str], levels: Sequence[str]) -> str:
  head = ("| run | " + " | ".join(f"level {k}" for k in levels)
          + " | all | trained tokens | steps | mean off_example_ratio |")
  return "\n".join([head, "|" + "---|" * (len(levels) + 5), *rows])


def trailing_mean(values: Sequence[float], window: int) -> np.ndarray:
  """[K] mean of each value and the (window − 1) before it (fewer at the start)."""
  v = np.asarray(values, np.float64)
  c = np.concatenate([[0.0], np.cumsum(v)])
  lo = np.maximum(np.arange(1, v.size + 1) - window, 0)
  return (c[1:] - c[lo]) / (np.arange(1, v.size + 1) - lo)


def plot_vs_tokens(groups: Mapping[str, Sequence[Sequence[Mapping[str, float]]]], key: str,
                   path: pathlib.Path, *, ylabel: str, title: str, window: int = 1) -> pathlib.Path:
  """One line per run (a colour per group) of `key` against the run's training tokens so far.

  Runs of one method take different numbers of steps to spend the budget, so they are drawn against
  `train/tokens_total` (the common clock, the lr schedule's too) and not averaged over seeds.
  `window` > 1 draws the trailing mean over that many logged points (per-step metrics of 4 questions
  are too noisy to read one by one).
  """
  from hpt_jax import figures
  plt = figures.pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  for i, (label, runs) in enumerate(groups.items()):
    for j, records in enumerate(runs):
      pts = [(r[TOKENS_TOTAL], r[key]) for r in records if key in r and TOKENS_TOTAL in r]
      if pts:
        x, y = zip(*pts)
        ax.plot(np.asarray(x) / 1000, trailing_mean(y, window), marker="." if window == 1 else None,
                color=f"C{i}", alpha=0.8, label=label if j == 0 else None)
  ax.set(xlabel="training tokens (thousands)", ylabel=ylabel, title=title)
  if ax.get_legend_handles_labels()[0]:  # nothing logged yet: no legend
    ax.legend(fontsize=8)
  return figures.save_figure(fig, path)


def _exclusive(runs: Mapping[str, RunOutcome], spec: ms.Spec) -> str:
  """HPT (γ = 0) against each baseline, seed by seed, counts summed over seeds."""
  lines = []
  header = None
  for method in (ms.Method.SFT, ms.Method.GRPO, ms.Method.SFT_GRPO, ms.Method.LUFFY):
    totals: dict[str, list[int]] = {}
    for seed in spec.seeds:
      hpt, other = runs.get(ms.RunKey(ms.Method.HPT, seed).name), runs.get(ms.RunKey(method, seed).name)
      if hpt is None or other is None:
        continue  # not run (yet): RESULTS.md is rewritten after every run
      for row in exclusive_solves(hpt.results, other.results):
        t = totals.setdefault(row.level, [0, 0, 0])
        t[0] += row.plus
        t[1] += row.minus
        t[2] += row.total
    if not totals:
      continue
    if header is None:
      header = "| vs | " + " | ".join(f"L{k} (N={v[2]})" if k != "Overall" else f"Overall ({v[2]})"
                                      for k, v in totals.items()) + " |"
      lines += [header, "|" + "---|" * (len(totals) + 1)]
    lines.append(f"| {method.value} | " + " | ".join(f"+{p}/−{m}" for p, m, _ in totals.values()) + " |")
  return "\n".join(lines)


def write(spec: ms.Spec, *, runs: Mapping[str, RunOutcome], base: Sequence[ProblemResult],
          results_dir: pathlib.Path, seconds: Mapping[str, float], usage: Usage,
          reduced_note: str = "") -> pathlib.Path:
  """Writes RESULTS.md and plots/ under results_dir; returns the RESULTS.md path."""
  levels = _levels(base)
  by_method = lambda m, g=0: [o for o in runs.values() if o.key.method is m and o.key.gamma == g]
  table2 = _table([_score_row("base (pretrained on levels "
                              f"{', '.join(map(str, spec.pretrain_levels))})", None, base, levels)]
                  + [_score_row(m.value + (" (γ = 0)" if m is ms.Method.HPT else ""), by_method(m), None, levels)
                     for m in ms.Method if by_method(m)], levels)
  table6 = _table([_score_row(f"HPT γ = {g}/{spec.rollouts}" if g else "HPT γ = 0", by_method(ms.Method.HPT, g),
                              None, levels) for g in spec.gammas if by_method(ms.Method.HPT, g)], levels)
  missing = [k.name for k in ms.all_runs(spec) if k.name not in runs]
  plots = results_dir / "plots"
  groups = {m.value: [o.records for o in by_method(m)] for m in ms.Method}
  plot_vs_tokens(groups, curves.VAL_ACCURACY, plots / "val_accuracy.png", ylabel="held-out accuracy (val)",
                 title="validation accuracy during post-training (one line per seed)")
  gates = {(f"HPT γ={g}/{spec.rollouts}" if g else "HPT γ=0"): [o.records for o in by_method(ms.Method.HPT, g)] for g in spec.gammas}
  gates["LUFFY"] = groups[ms.Method.LUFFY.value]
  plot_vs_tokens(gates, curves.OFF_RATIO, plots / "off_example_ratio.png", ylabel="off_example_ratio",
                 title="share of demonstration rows per step (mean of the last 8 steps)", window=8)
  plot_vs_tokens(groups, curves.TRAIN_LENGTH, plots / "response_length.png",
                 ylabel="rollout length (tokens)", title="rollout length (mean of the last 8 steps)", window=8)
  minutes = {k: f"{v / 60:.1f}" for k, v in seconds.items()}
  counts = collections.Counter(str(r.level) for r in base)
  se = _se_line([base, *(o.results for o in runs.values())], levels)
  text = f"""# Miniature Table 2 (generated by `python experiments/miniature/run.py`)

{('**' + reduced_note + '**') if reduced_note else ''}
{('**INCOMPLETE: not run (yet): ' + ', '.join(missing) + '**') if missing else ''}

Setup (experiments/miniature/mini_setup.py): the tiny Qwen2 (~3M parameters) pretrained by SFT for
{spec.pretrain_steps} steps × {spec.pretrain_prompts} demonstrations on levels {spec.pretrain_levels} only, then
post-trained on levels {spec.post_levels} with **an equal budget of {spec.token_budget:,} training tokens per run**
(each run stops after the first step at which the real prompt + response tokens it has updated on reach
the budget; SFT→GRPO: the SFT stage stops at half, the GRPO stage gets the rest), in steps of {spec.prompts}
questions × {spec.rollouts} rows (lr peak {spec.lr}, the same for all methods, not tuned per method;
{'constant' if spec.constant_lr else f'warm-up {spec.warmup_fraction:.0%} + cosine to {spec.final_lr_ratio:.0%} whose clock is the training-token count, so every method has the same lr at the same fraction of its budget; SFT→GRPO runs one schedule across its two stages'}), seeds {spec.seeds}. Evaluation:
{', '.join(f"level {k}: {counts[k]}" for k in levels)} held-out problems, {spec.eval_samples} samples each at temperature 0.6 / top-p 0.95;
cells are avg@{spec.eval_samples} (the paper's pass@1) in %, mean ± std over seeds. "trained tokens" is
what the train step consumed (mean over seeds; a run overshoots the budget by less than its last
step), "steps" the optimizer updates it took (HPT's SFT questions use 1 row instead of {spec.rollouts}, so
HPT needs more steps, and samples more rollouts, for the same tokens).

## Table 2 analogue: accuracy by level

{table2}

## Table 4 analogue: exclusive solves of HPT (γ = 0) against each baseline

"+X/−Y": X held-out problems solved (≥ 1 of {spec.eval_samples} samples correct) by HPT but not the baseline, Y
the reverse; counts summed over seeds (seed-matched pairs).

{_exclusive(runs, spec)}

Standard error of one run's score over problems (std of the per-problem fraction correct / √N), the
range over all runs, in points: {se}. A difference between two single runs smaller than about twice
this is noise; the mean over 3 seeds has about 1/√3 of it (plus the seed-to-seed spread shown as ±).

## Table 6 analogue: the gate threshold γ

{table6}

## Plots

![validation accuracy](plots/val_accuracy.png)
![off_example_ratio](plots/off_example_ratio.png)
![response length](plots/response_length.png)

{'The invocation that trained these runs' if usage.regenerated else 'This invocation'}: **{usage.wall_s / 60:.1f} min wall**, {usage.cpu_s / 60:.1f} CPU-min (user + system of the command's
process and of the {usage.workers} post-training worker process(es) it ran), 1-minute load average
{usage.load_min:.1f}–{usage.load_max:.1f} on {os.cpu_count()} cores (sampled every 30 s).{' The tables and plots were regenerated from its runs afterwards by `--report_only`.' if usage.regenerated else ''} Training wall time per run, summed
over invocations (min): {minutes}.
"""
  path = results_dir / "RESULTS.md"
  # A hand-written analysis below the marker survives regeneration (e.g. --report_only).
  old = path.read_text() if path.is_file() else ""
  kept = old[old.index(ANALYSIS_MARKER):] if ANALYSIS_MARKER in old else ""
  path.write_text(text + ("\n" + kept if kept else ""))
  return path
