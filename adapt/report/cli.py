"""`python -m adapt.report SWEEP_DIR`: write report.md, report.csv, jobs.csv and the plots."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from adapt.atomic import write_text
from adapt.report.aggregate import Report, build_report
from adapt.report.jobs import COMPLETE, STATUSES
from adapt.report.paper import PAPER_MODELS, PaperReference, load_paper
from adapt.report.plots import plot_report
from adapt.report.render import avg_text, render_markdown
from adapt.report.tables import JOBS_COLUMNS, REPORT_COLUMNS, csv_text, job_rows, report_rows


def write_report(report: Report, out_dir: str | os.PathLike[str], plots: bool = True) -> dict[str, Path]:
    """Write report.md, report.csv, jobs.csv and the plots; returns their paths by name."""
    out = Path(out_dir)
    written: dict[str, Path] = {}
    pngs: dict[str, list[Path]] = {}
    if plots:
        for mr in report.models:
            pngs[mr.model] = plot_report(mr, report.paper, out / "plots", report.ddof)
            written.update({png.name: png for png in pngs[mr.model]})
    write_text(out / "report.csv", csv_text(REPORT_COLUMNS, report_rows(report)))
    write_text(out / "jobs.csv", csv_text(JOBS_COLUMNS, job_rows(report)))
    write_text(out / "report.md", render_markdown(report, pngs, out))
    written.update({name: out / name for name in ("report.csv", "jobs.csv", "report.md")})
    return written


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m adapt.report",
        description="Tables and plots of a sweep folder, next to the GLIP paper's ODinW numbers.",
    )
    parser.add_argument("sweep_dir", type=Path, help="folder of a multirun (e.g. multirun/odinw13/glip_t)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: SWEEP_DIR/report)")
    parser.add_argument("--paper-model", choices=PAPER_MODELS, default=None, help="paper row to compare with")
    parser.add_argument(
        "--paper-dir", type=Path, default=None, help="folder of paper_*.csv (default: shipped)"
    )
    parser.add_argument("--no-paper", action="store_true", help="leave the paper's numbers out")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument(
        "--ddof", type=int, choices=(0, 1), default=0, help="std over seeds: 0 population, 1 sample"
    )
    parser.add_argument(
        "--tasks",
        nargs="+",
        default=None,
        metavar="TASK",
        help="report only these tasks (e.g. world/synonyms)",
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 when a job failed, is missing or unfinished"
    )
    return parser


def _summary(report: Report) -> list[str]:
    counts = {s: len(report.by_status(s)) for s in STATUSES}
    lines = [", ".join(f"{n} {s}" for s, n in counts.items())]
    for mr in report.models:
        for mode in mr.modes:
            cells = [
                f"{s}: {avg_text(mr.averages[(mode, str(s))])}"
                for s in mr.shots
                if (mode, str(s)) in mr.averages
            ]
            if cells:
                lines.append(f"{mr.model} {mode} ({mr.suite}): " + "; ".join(cells))
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        parser.error(f"{args.sweep_dir} is not a folder")
    paper = PaperReference() if args.no_paper else load_paper(args.paper_dir)
    try:
        report = build_report(
            args.sweep_dir, paper=paper, paper_model=args.paper_model, ddof=args.ddof, tasks=args.tasks
        )
    except ValueError as exc:
        parser.error(str(exc))
    written = write_report(report, args.out or args.sweep_dir / "report", plots=not args.no_plots)
    print("\n".join(_summary(report)))
    print(f"wrote {written['report.md']}")
    unfinished = sum(1 for j in report.jobs if j.status != COMPLETE)
    return 1 if args.strict and unfinished else 0
