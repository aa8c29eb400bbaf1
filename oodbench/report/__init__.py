"""Reads result files (never models) and writes the tables and figures users read."""

from oodbench.report.figures import bpd_histogram
from oodbench.report.findings import finding
from oodbench.report.summary import mean_interval, summarize
from oodbench.report.tables import collect_results, write_report
from oodbench.schema import RESULT_COLUMNS

__all__ = ["RESULT_COLUMNS", "bpd_histogram", "collect_results", "finding", "mean_interval", "summarize", "write_report"]
