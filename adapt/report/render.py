"""report.md: one function per section, each returning its lines."""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

from adapt.grid import ZERO_MODE, Shots, shots_sort_key
from adapt.markdown import md_escape, md_table
from adapt.report.aggregate import Average, ModelReport, Report
from adapt.report.grounding import grounding_lines
from adapt.report.jobs import COMPLETE, DIED, FAILED, MISSING, RUNNING, STATUSES
from adapt.report.timing import time_table

_MAX_LISTED = 200


def fmt(value: float | None, std: float | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.1f}" if std is None else f"{value:.1f} ± {std:.1f}"


def avg_text(avg: Average | None) -> str:
    if avg is None:
        return ""
    if avg.mean is None:
        return f"— ({len(avg.missing)} missing)"
    return fmt(avg.mean, avg.std)


def paper_mode(mode: str, shots: Shots, mr: ModelReport | None = None) -> str:
    """The 0 column of every mode's table is the zero-shot evaluation; an evaluation-only mode
    (``evaluates_only: true``, e.g. ``zero_ensemble``) shows its own, where ``mr`` has its runs."""
    own = mr is not None and mr.evaluates_at_zero(mode)
    return ZERO_MODE if shots == 0 and not own else mode


def rel(path: Path | None, base: Path) -> str:
    if path is None:
        return ""
    try:
        return path.relative_to(base.resolve()).as_posix()
    except ValueError:
        return str(path)


def last_line(text: str | None) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def _header(report: Report) -> list[str]:
    counts = {s: len(report.by_status(s)) for s in STATUSES}
    lines = [
        f"# Sweep report: `{report.sweep_dir}`",
        "",
        f"Jobs: {counts[COMPLETE]} complete, {counts[FAILED]} failed, "
        f"{counts[RUNNING]} running or interrupted, {counts[DIED]} died, {counts[MISSING]} missing "
        f"(of {sum(counts.values())}).",
        "",
        "AP is COCO box mAP@[.5:.95] on the test split, in percent. Ours: mean ± std over seeds "
        f"({'population' if report.ddof == 0 else 'sample'} std; none for a single seed); "
        "`*` marks a cell with fewer seeds than the sweep asked for. "
        "The 0 column is the zero-shot evaluation, shared by all modes.",
    ]
    if report.paper.source is None:
        lines += ["", "Paper numbers: not found (set ADAPT_PAPER_DIR to benchmarks/odinw)."]
    return lines


def _reference(mr: ModelReport) -> list[str]:
    if not mr.paper_model:
        return ["Paper reference: none for this model."]
    lines = [
        f"Paper reference: {mr.paper_model} (glip_spec.md 5.2-5.4b: averages ± std from Tables "
        "11-14, per-dataset figures from Tables 14-16)."
    ]
    if mr.paper_model == "GLIP-T":
        lines.append(
            "The paper's GLIP-T was pre-trained with Cap4M and is not released; the released "
            "GLIP-T (CC3M+SBU) is compared against it as the nearest published row."
        )
    return lines


def _average_table(mr: ModelReport, report: Report) -> list[str]:
    """Mode x shots of the suite average, with the paper's headline figure next to ours."""
    header = ["mode"] + [
        c for s in mr.shots for c in ((str(s), f"{s} paper") if mr.paper_model else (str(s),))
    ]
    rows = []
    missing_notes: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for mode in mr.modes:
        row = [mode]
        for s in mr.shots:
            avg = mr.averages.get((mode, str(s)))
            if avg is not None and avg.missing:
                missing_notes[tuple(avg.missing)].append(f"{mode} {s}")
            row.append(avg_text(avg))
            if mr.paper_model:
                head = report.paper.headline(mr.paper_model, mode, s)
                row.append(fmt(head[0], head[1]) if head else "")
        rows.append(row)
    lines = ["", f"### {mr.suite} average", "", *md_table(header, rows)]
    if missing_notes:
        lines += ["", f"No {mr.suite} average where a dataset has no result (mode shots: missing):", ""]
        lines += [f"- {', '.join(cells)}: {', '.join(names)}" for names, cells in missing_notes.items()]
    return lines


def _row_shots(mr: ModelReport, mode: str) -> list[Shots]:
    """Columns of a mode's table: zero-shot first (shared by all modes), then what ran."""
    cols = set(mr.mode_shots.get(mode, ()))
    if ZERO_MODE in mr.mode_shots:
        cols.add(0)
    return sorted(cols, key=shots_sort_key)


def _ours(mr: ModelReport, task: str, mode: str, shots: Shots, ddof: int) -> str:
    cell = mr.cells.get((task, paper_mode(mode, shots, mr), shots))
    if cell is None or not cell.n:
        return ""
    return fmt(cell.mean, cell.std(ddof)) + (" *" if cell.partial else "")


def _mode_table(mr: ModelReport, mode: str, report: Report) -> list[str]:
    """Dataset x shots of one mode, ours next to the paper's per-dataset figure."""
    cols = _row_shots(mr, mode)
    header = ["dataset"] + [
        c for s in cols for c in ((str(s), f"{s} paper") if mr.paper_model else (str(s),))
    ]
    rows = []
    for task in mr.tasks:
        row = [mr.label(task)]
        for s in cols:
            row.append(_ours(mr, task, mode, s, report.ddof))
            if mr.paper_model:
                row.append(
                    fmt(report.paper.dataset(mr.paper_model, paper_mode(mode, s, mr), s, mr.paper_key(task)))
                )
        rows.append(row)
    avg_row = [f"**{mr.suite} avg**"]
    for s in cols:
        avg_row.append(avg_text(mr.averages.get((paper_mode(mode, s, mr), str(s)))))
        if mr.paper_model:
            avg_row.append(fmt(report.paper.table_average(mr.paper_model, paper_mode(mode, s, mr), s)))
    rows.append(avg_row)
    title = ["", f"### {mr.mode_title(mode)} (`mode={mode}`)", ""]
    return [*title, *_params_line(mr, mode), *md_table(header, rows)]


def _params_line(mr: ModelReport, mode: str) -> list[str]:
    """The trainable parameter count the mode's runs recorded (a range where it depends on the task)."""
    counts = mr.mode_params.get(mode) or []
    if not counts:
        return []
    low, high = counts[0][0], counts[-1][0]
    if high == 0:
        return ["Trainable parameters: none (evaluation only).", ""]
    trained = f"{low:,}" if low == high else f"{low:,} to {high:,} (by task)"
    total = counts[-1][1]
    share = f" of {total:,} ({100 * high / total:.3g}%)" if total else ""
    return [f"Trainable parameters: {trained}{share}.", ""]


def _model_section(
    mr: ModelReport, report: Report, plots: Mapping[str, list[Path]], out_dir: Path | None
) -> list[str]:
    lines = ["", f"## Model `{mr.model}`", "", *_reference(mr), *_average_table(mr, report)]
    for mode in [m for m in mr.modes if m != ZERO_MODE] or [ZERO_MODE]:
        lines += _mode_table(mr, mode, report)
    lines += time_table(mr, report.jobs)
    if mr.paper_model:
        lines += [
            "",
            "The paper's avg row in these tables is the Avg column of Tables 14-16; it differs from the "
            "Tables 11-14 averages above by 0.1-0.4 AP in a few cells (glip_spec.md 5.2, 5.4b).",
        ]
    for png in plots.get(mr.model, []):
        link = os.path.relpath(png, out_dir) if out_dir else str(png)
        lines += ["", f"![{png.stem}]({Path(link).as_posix()})"]
    return lines


def _job_sections(report: Report) -> list[str]:
    """The jobs that are not complete: failed (last line of the traceback), running, missing."""
    lines: list[str] = []
    sections = (
        (FAILED, "Failed jobs", "error (last line; full traceback in the folder's results.json)"),
        (RUNNING, "Running or interrupted jobs", "started"),
        (DIED, "Died jobs (the process is gone: killed, out of memory or out of time)", "process"),
        (MISSING, "Missing jobs (planned by the sweep, no results.json)", "note"),
    )
    for status, title, detail in sections:
        jobs = report.by_status(status)
        if not jobs:
            continue
        rows = []
        for job in jobs[:_MAX_LISTED]:
            p = job.point
            text = last_line(job.error) if status == FAILED else (job.note or "")
            rows.append([p.model, p.task, p.mode, p.shots, p.seed, text, rel(job.path, report.sweep_dir)])
        lines += ["", f"## {title} ({len(jobs)})", ""]
        lines += md_table(["model", "task", "mode", "shots", "seed", detail, "folder"], rows)
        if len(jobs) > _MAX_LISTED:
            lines.append(f"\n... and {len(jobs) - _MAX_LISTED} more, see jobs.csv.")
    if not any(report.by_status(s) for s in (FAILED, RUNNING, DIED, MISSING)):
        lines += ["", "All expected jobs are complete."]
    return lines


def render_markdown(
    report: Report, plots: Mapping[str, list[Path]] | None = None, out_dir: Path | None = None
) -> str:
    """The Markdown report; `plots` maps a model to its PNG files, linked relative to `out_dir`."""
    lines = _header(report)
    for mr in report.models:
        lines += _model_section(mr, report, plots or {}, out_dir)
    lines += grounding_lines(report.jobs)
    lines += _job_sections(report)
    if report.warnings:
        lines += ["", "## Warnings", ""] + [f"- {md_escape(w)}" for w in report.warnings]
    return "\n".join(lines) + "\n"
