"""What each mode cost per run, by shots: the time table of a model's report section.

Why: whether a mode is worth its AP depends on what it costs, and on a CPU the gap between modes
is large. results.json records ``cpu_time_s`` (this process's CPU seconds, the figure that does not
depend on what else the machine runs) and ``wall_time_s``; a cell is their mean over the complete
runs of that mode and shots (all tasks and seeds), with the count of runs.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from adapt.grid import shots_sort_key
from adapt.markdown import md_table
from adapt.report.aggregate import ModelReport
from adapt.report.jobs import COMPLETE, Job


def _seconds(job: Job, key: str) -> float | None:
    value = (job.results or {}).get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _cell(jobs: Sequence[Job]) -> str:
    cpu = [v for j in jobs if (v := _seconds(j, "cpu_time_s")) is not None]
    wall = [v for j in jobs if (v := _seconds(j, "wall_time_s")) is not None]
    if not wall:
        return ""
    text = (
        f"{statistics.fmean(cpu):.0f} ({statistics.fmean(wall):.0f})"
        if cpu
        else f"— ({statistics.fmean(wall):.0f})"
    )
    return f"{text} n={len(wall)}"


def time_table(mr: ModelReport, jobs: Sequence[Job]) -> list[str]:
    """Mode x shots: CPU seconds (wall seconds) per run; empty when no complete run recorded time."""
    done = [j for j in jobs if j.point.model == mr.model and j.status == COMPLETE]
    shots = sorted({j.point.shots for j in done}, key=shots_sort_key)
    rows = []
    for mode in mr.modes:
        row = [mr.mode_title(mode)] + [
            _cell([j for j in done if j.point.mode == mode and j.point.shots == s]) for s in shots
        ]
        if any(row[1:]):
            rows.append(row)
    if not rows:
        return []
    return [
        "",
        "### Time per run",
        "",
        "CPU seconds (wall seconds) per run, mean over the complete runs of all tasks and seeds; "
        "n = runs. CPU time counts this process's threads only (not DataLoader workers).",
        "",
        *md_table(["mode", *map(str, shots)], rows),
    ]
