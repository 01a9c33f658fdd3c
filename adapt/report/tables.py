"""report.csv (one row per model x task x mode x shots, then the averages) and jobs.csv."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from adapt.grid import mode_sort_key, shots_sort_key
from adapt.report.aggregate import ModelReport, Report
from adapt.report.jobs import COMPLETE, DIED, FAILED, MISSING, RUNNING, task_sort_key
from adapt.report.render import last_line, rel

REPORT_COLUMNS = (
    "model",
    "task",
    "dataset",
    "mode",
    "shots",
    "n_seeds",
    "seeds",
    "mean",
    "std",
    "paper_model",
    "paper",
    "paper_std",
    "delta",
    "missing",
)
JOBS_COLUMNS = ("model", "task", "mode", "shots", "seed", "status", "ap", "folder", "job_id", "error")


def _cell_rows(mr: ModelReport, report: Report) -> list[dict[str, Any]]:
    rows = []
    for (task, mode, shots), cell in sorted(
        mr.cells.items(),
        key=lambda kv: (
            task_sort_key(kv[0][0], mr.labels.get(kv[0][0])),
            mode_sort_key(kv[0][1]),
            shots_sort_key(kv[0][2]),
        ),
    ):
        ref = report.paper.dataset(mr.paper_model, mode, shots, mr.paper_key(task))
        std = cell.std(report.ddof)
        rows.append(
            {
                "model": mr.model,
                "task": task,
                "dataset": mr.labels.get(task, ""),
                "mode": mode,
                "shots": shots,
                "n_seeds": cell.n,
                "seeds": " ".join(str(s) for s in sorted(cell.values)),
                "mean": round(cell.mean, 4),
                "std": "" if std is None else round(std, 4),
                "paper_model": mr.paper_model or "",
                "paper": "" if ref is None else ref,
                "paper_std": "",
                "delta": "" if ref is None else round(cell.mean - ref, 4),
                "missing": "",
            }
        )
    return rows


def _average_rows(mr: ModelReport, report: Report) -> list[dict[str, Any]]:
    rows = []
    for mode in mr.modes:
        for s in mr.shots:
            avg = mr.averages.get((mode, str(s)))
            if avg is None:
                continue
            head = report.paper.headline(mr.paper_model, mode, s)
            rows.append(
                {
                    "model": mr.model,
                    "task": f"{mr.suite} average",
                    "dataset": "avg",
                    "mode": mode,
                    "shots": s,
                    "n_seeds": len(avg.seeds),
                    "seeds": " ".join(str(x) for x in avg.seeds),
                    "mean": "" if avg.mean is None else round(avg.mean, 4),
                    "std": "" if avg.std is None else round(avg.std, 4),
                    "paper_model": mr.paper_model or "",
                    "paper": head[0] if head else "",
                    "paper_std": "" if not head or head[1] is None else head[1],
                    "delta": round(avg.mean - head[0], 4) if head and avg.mean is not None else "",
                    "missing": " ".join(avg.missing),
                }
            )
    return rows


def report_rows(report: Report) -> list[dict[str, Any]]:
    """report.csv rows: one per model x task x mode x shots, then the suite averages."""
    rows = []
    for mr in report.models:
        rows += _cell_rows(mr, report) + _average_rows(mr, report)
    return rows


def job_rows(report: Report) -> list[dict[str, Any]]:
    """jobs.csv rows: every job, planned or found, with its status (unfinished ones first)."""
    order = {FAILED: 0, RUNNING: 1, DIED: 2, MISSING: 3, COMPLETE: 4}
    rows = []
    for job in sorted(report.jobs, key=lambda j: (order[j.status], j.sort_key)):
        p = job.point
        rows.append(
            {
                "model": p.model,
                "task": p.task,
                "mode": p.mode,
                "shots": p.shots,
                "seed": p.seed,
                "status": job.status,
                "ap": "" if job.ap is None else job.ap,
                "folder": rel(job.path, report.sweep_dir),
                "job_id": job.job_id or "",
                "error": last_line(job.error) if job.status == FAILED else (job.note or ""),
            }
        )
    return rows


def csv_text(columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
