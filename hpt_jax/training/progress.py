"""A progress bar with ETA and a few live metrics, plus the one-line-per-step log.

tqdm draws the bar (on stderr, process 0 only); the per-step summary goes through absl logging so
that it lands in the run's log file whether or not a terminal is attached.
"""

from __future__ import annotations

from typing import Mapping

from absl import logging
import tqdm

from hpt_jax.training.metrics import summary_line

_LIVE_KEYS = ("reward/accuracy", "gate/off_example_ratio", "train/loss", "response/length_mean")


class Progress:
  """Bar over steps `[start, total)` with live postfix metrics and a summary line every k steps."""

  def __init__(self, *, start: int, total: int, enabled: bool, log_summary: bool,
               summary_every: int = 1, description: str = "train"):
    self.summary_every = summary_every
    self.enabled = enabled
    self.log_summary = log_summary
    self._bar = tqdm.tqdm(total=total, initial=start, desc=description, unit="step",
                          disable=not enabled, dynamic_ncols=True, leave=True)

  def update(self, step: int, metrics: Mapping[str, float]) -> None:
    """Marks `step` (1-based count of finished steps) done and shows its metrics."""
    if self.enabled:
      self._bar.set_postfix({k.split("/")[-1]: f"{float(metrics[k]):.3g}"
                             for k in _LIVE_KEYS if k in metrics}, refresh=False)
      self._bar.update(1)
    if self.log_summary and step % self.summary_every == 0:
      logging.info("%s", summary_line(step, metrics))

  def close(self) -> None:
    self._bar.close()
