"""The end-of-run report (hpt_jax.reporting): start/final accuracy table and the three PNG plots.

References: hand-written metrics records with known values; PNGs are decoded back with matplotlib.
"""

import json

import numpy as np
import pytest

from hpt_jax import reporting
from hpt_jax.reporting import curves


def _records():
  # Steps 0 (validation before training), 1..4 (training), validation again at 2 and 4.
  out = [{"step": 0, "val/accuracy": 0.1, "val/accuracy_level_1": 0.2, "val/accuracy_level_2": 0.0,
          "val/response_length_mean": 40.0}]
  for s in range(1, 5):
    r = {"step": s, "reward/accuracy": 0.1 * s, "gate/off_example_ratio": 1.0 / s, "response/length_mean": 30.0 + s}
    if s % 2 == 0:
      r |= {"val/accuracy": 0.1 + 0.2 * s, "val/accuracy_level_1": 0.2 + 0.2 * s,
            "val/accuracy_level_2": 0.1 * s, "val/response_length_mean": 20.0}
    out.append(r)
  return out


def _write(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_series_and_table(tmp_path):
  _write(tmp_path / "metrics.jsonl", _records())
  records = reporting.read_records(tmp_path / "metrics.jsonl")
  s = reporting.series(records, "gate/off_example_ratio")
  np.testing.assert_array_equal(s.steps, [1, 2, 3, 4])
  np.testing.assert_allclose(s.values, [1, 1 / 2, 1 / 3, 1 / 4])
  assert curves.level_keys(records) == {1: "val/accuracy_level_1", 2: "val/accuracy_level_2"}
  table = reporting.accuracy_table(records)
  assert (table.start_step, table.final_step) == (0, 4)
  got = {r.name: (r.start, r.final) for r in table.rows}
  assert got == {"level 1": (0.2, pytest.approx(1.0)), "level 2": (0.0, pytest.approx(0.4)),
                 "all": (0.1, pytest.approx(0.9))}
  text = table.format()
  assert "| level 2 | 0.000 | 0.400 | +0.400 |" in text and "step 0" in text and "step 4" in text


def test_records_merge_same_step_and_reject_bad_lines(tmp_path):
  path = tmp_path / "metrics.jsonl"
  _write(path, [{"step": 0, "val/accuracy": 0.5}, {"step": 0, "reward/accuracy": 0.25}])
  assert reporting.read_records(path) == [{"step": 0, "val/accuracy": 0.5, "reward/accuracy": 0.25}]
  path.write_text('{"step": 0}\n{"loss": 1}\n')
  with pytest.raises(ValueError, match=r"metrics.jsonl:2: .*'step'"):
    reporting.read_records(path)
  _write(path, [{"step": 3, "val/accuracy": 0.5}])
  with pytest.raises(ValueError, match="1 validation record"):
    reporting.accuracy_table(reporting.read_records(path))


def test_report_run_writes_pngs_and_summary(tmp_path):
  import matplotlib.image
  _write(tmp_path / "metrics.jsonl", _records())
  report = reporting.report_run(tmp_path, title="t")
  assert set(report.plots) == {"accuracy", "off_example_ratio", "response_length"}
  for path in report.plots.values():
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100
    assert image[..., :3].std() > 0.01  # something was drawn
  text = report.summary.read_text()
  assert report.table in text and "plots/accuracy.png" in text
