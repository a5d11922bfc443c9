"""Writing matplotlib figures to files: the one place that picks the headless backend and saves."""

from __future__ import annotations

import pathlib
from typing import Any


def pyplot() -> Any:
  """matplotlib.pyplot on the file-only Agg backend (no display on servers and CI)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def save_figure(fig: Any, path: str | pathlib.Path, *, dpi: int = 110) -> pathlib.Path:
  """Lays out `fig`, writes it to `path` (parent folders created) and closes it; returns the path."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=dpi)
  pyplot().close(fig)
  return path
