"""Reads result files (never models) and writes the tables and figures users read."""

from oodbench.report.figures import bpd_histogram
from oodbench.report.summary import mean_interval, summarize
from oodbench.report.tables import RESULT_COLUMNS, collect_results, write_report

__all__ = ["RESULT_COLUMNS", "bpd_histogram", "collect_results", "mean_interval", "summarize", "write_report"]
