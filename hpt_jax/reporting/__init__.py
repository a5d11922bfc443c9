"""Reports of finished runs: training-curve plots and start-vs-final accuracy tables."""

from hpt_jax.reporting.curves import Series, plot_run, read_records, series
from hpt_jax.reporting.summary import AccuracyRow, AccuracyTable, RunReport, accuracy_table, report_run

__all__ = ["AccuracyRow", "AccuracyTable", "RunReport", "Series", "accuracy_table", "plot_run",
           "read_records", "report_run", "series"]
