"""Device-hours of a sweep: measured per-step and per-image costs times the protocol's work.

E, the number of evaluation periods a run makes, is either read from a finished sweep (its
manifest and results.json files, through `adapt.report.collect_jobs`) or bounded by the protocol
(early-stop patience + 1 <= E <= epochs).
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapt.grid import ZERO_MODE, Shots, shots_sort_key
from benchmarks.odinw.protocol import ShotsRecipe, TaskSize, sweep_cost, sweep_work, totals, wall_clock


@dataclass
class SweepStats:
    """Complete runs of one model in a sweep folder."""

    path: str
    model: str | None
    statuses: dict[str, int] = field(default_factory=dict)
    evaluations: dict[tuple[str, Shots], list[int]] = field(default_factory=dict)
    wall_time_s: float = 0.0
    wall_by_mode: dict[str, float] = field(default_factory=dict)
    zero_shot_wall: dict[str, float] = field(default_factory=dict)

    def mean_evaluations(self, mode: str, shots: Shots) -> float | None:
        values = self.evaluations.get((mode, shots))
        return statistics.fmean(values) if values else None

    def evaluations_by_shots(self) -> dict[Shots, list[int]]:
        out: dict[Shots, list[int]] = defaultdict(list)
        for (mode, shots), values in self.evaluations.items():
            if mode != ZERO_MODE:
                out[shots] += values
        return {k: sorted(out[k]) for k in sorted(out, key=shots_sort_key)}


def read_sweep(sweep_dir: str | Path, model: str | None = None) -> SweepStats:
    """E per (mode, shots) and wall times of the complete runs (of ``model``) under ``sweep_dir``."""
    from adapt.report import collect_jobs

    jobs, _ = collect_jobs(sweep_dir)
    stats = SweepStats(path=str(sweep_dir), model=model)
    statuses: Counter[str] = Counter()
    evaluations: dict[tuple[str, Shots], list[int]] = defaultdict(list)
    by_mode: dict[str, float] = defaultdict(float)
    for job in jobs:
        if model is not None and job.point.model != model:
            continue
        statuses[job.status] += 1
        data = job.results if job.status == "complete" else None
        if data is None:
            continue
        wall = float(data.get("wall_time_s") or 0.0)
        stats.wall_time_s += wall
        by_mode[job.point.mode] += wall
        if job.point.mode == ZERO_MODE:
            stats.zero_shot_wall[job.point.task] = wall
        else:
            evaluations[(job.point.mode, job.point.shots)].append(len(data.get("val_history") or []))
    stats.statuses = dict(statuses)
    stats.evaluations = dict(evaluations)
    stats.wall_by_mode = dict(by_mode)
    return stats


def t_job_from_sweep(stats: SweepStats, sizes: Sequence[TaskSize]) -> tuple[str, float] | None:
    """The README's t_job: wall time of the zero-shot run on the dataset with the fewest eval images."""
    smallest = sorted(sizes, key=lambda s: s.val + s.test)
    for size in smallest:
        if size.task in stats.zero_shot_wall:
            return size.task, stats.zero_shot_wall[size.task]
    return None


@dataclass
class Estimate:
    """Device time of one sweep of one model under one choice of E."""

    model: str
    label: str
    evaluations: dict[str, float]
    jobs: int
    steps: dict[str, float]
    eval_images: float
    hours: float | None
    longest_run_hours: float | None
    t_job_included: bool
    flop_total: float | None
    flop_hours_at_peak: float | None
    wall_hours: dict[int, float] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)


def estimates_for(
    model: str,
    measured: Mapping[str, Any] | None,
    sizes: Sequence[TaskSize],
    recipes: Mapping[Shots, ShotsRecipe],
    runs: Mapping[tuple[str, Shots], int],
    batch: int,
    sweep: SweepStats | None,
    t_job: float | None,
    peak_tflops: float | None,
    devices: Sequence[int],
) -> list[Estimate]:
    """One estimate per E choice: the sweep's E (when given), else the protocol's minimum and maximum."""
    choices: list[tuple[str, Callable[[str, Shots], float]]] = []
    if sweep is not None and sweep.evaluations:

        def from_sweep(mode: str, shots: Shots) -> float:
            value = sweep.mean_evaluations(mode, shots)
            return value if value is not None else float(recipes[shots].min_evaluations)

        choices.append(("E from the sweep", from_sweep))
    else:
        choices.append(("E at the protocol minimum", lambda m, s: float(recipes[s].min_evaluations)))
        choices.append(("E at the protocol maximum", lambda m, s: float(recipes[s].max_evaluations)))

    t_step, f_step, missing = {}, {}, []
    train = (measured or {}).get("train", {})
    for mode, _ in runs:
        if mode == ZERO_MODE:
            continue
        entry = train.get(mode) or {}
        if "t_step" in entry:
            t_step[mode] = entry["t_step"]
        if "flops_per_step" in entry:
            f_step[mode] = entry["flops_per_step"]
        if "t_step" not in entry and f"t_step({mode})" not in missing:
            missing.append(f"t_step({mode})")
    ev = (measured or {}).get("eval") or {}
    t_img, f_img = ev.get("t_img"), ev.get("flops_per_image")
    if t_img is None:
        missing.append("t_img")
    trained = {m for m, _ in runs if m != ZERO_MODE}
    out = []
    for label, evaluations in choices:
        work = sweep_work(sizes, recipes, runs, evaluations, batch)
        tot = totals(work)
        hours = longest = None
        if t_img is not None and trained <= set(t_step):
            seconds, longest_s = sweep_cost(work, t_step, t_img, t_job or 0.0)
            hours, longest = seconds / 3600, longest_s / 3600
        flop_total = flop_hours = None
        if f_img is not None and trained <= set(f_step):
            flop_total, _ = sweep_cost(work, f_step, f_img)
            if peak_tflops:
                flop_hours = flop_total / (peak_tflops * 1e12) / 3600
        used = {f"{m} {s}": evaluations(m, s) for m, s in runs if m != ZERO_MODE}
        est = Estimate(
            model=model,
            label=label,
            evaluations=used,
            jobs=tot.jobs,
            steps=tot.steps,
            eval_images=tot.eval_images,
            hours=hours,
            longest_run_hours=longest,
            t_job_included=t_job is not None,
            flop_total=flop_total,
            flop_hours_at_peak=flop_hours,
            missing=list(missing),
        )
        if hours is not None and longest is not None:
            est.wall_hours = {d: wall_clock(hours, longest, d) for d in devices}
        out.append(est)
    return out
