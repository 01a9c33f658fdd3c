"""Sweep report: `python -m adapt.report SWEEP_DIR` turns a sweep folder into the paper's tables.

What it writes (into SWEEP_DIR/report unless --out says otherwise):
  report.md   ODinW-13 average (mode x shots) and one table per mode (dataset x shots), ours as
              mean ± std over seeds next to the paper's figures for the same model, then the
              failed, interrupted and missing jobs;
  report.csv  the same numbers in long form (one row per model x task x mode x shots);
  jobs.csv    every planned or found job with its status, folder, launcher job id and error;
  plots/      AP against shots per mode, ours solid, the paper's dashed.

The planned jobs come from the sweep manifest adapt's sweeper writes (`adapt.runs.manifest`), so a job
that never started is reported as missing rather than silently absent from an average; results come
from each job's results.json. An average over ODinW-13 is only given when all 13 datasets have a
value; otherwise the report names the missing ones.

Modules: `jobs` (manifest + results.json -> jobs), `aggregate` (cells and averages), `render`
(report.md), `tables` (the CSV files), `plots`, `paper` (the paper's numbers), `cli`.
"""

from adapt.report.aggregate import Average, Cell, ModelReport, Report, build_report
from adapt.report.cli import main, write_report
from adapt.report.jobs import COMPLETE, DIED, FAILED, MISSING, RUNNING, STATUSES, Job, collect_jobs
from adapt.report.paper import (
    AVERAGE_CSV,
    ODINW13_KEYS,
    PAPER_MODELS,
    PER_DATASET_CSV,
    PaperReference,
    load_paper,
    paper_data_dir,
)
from adapt.report.render import render_markdown
from adapt.report.tables import JOBS_COLUMNS, REPORT_COLUMNS, job_rows, report_rows

__all__ = [
    "AVERAGE_CSV",
    "COMPLETE",
    "DIED",
    "FAILED",
    "JOBS_COLUMNS",
    "MISSING",
    "ODINW13_KEYS",
    "PAPER_MODELS",
    "PER_DATASET_CSV",
    "REPORT_COLUMNS",
    "RUNNING",
    "STATUSES",
    "Average",
    "Cell",
    "Job",
    "ModelReport",
    "PaperReference",
    "Report",
    "build_report",
    "collect_jobs",
    "job_rows",
    "load_paper",
    "main",
    "paper_data_dir",
    "render_markdown",
    "report_rows",
    "write_report",
]
