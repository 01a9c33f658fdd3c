"""From jobs to the numbers of the tables: mean ± std over seeds per cell, and the suite average."""

from __future__ import annotations

import os
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from adapt.grid import Shots, mode_sort_key, shots_sort_key
from adapt.report.jobs import COMPLETE, Job, collect_jobs, is_grounding, task_sort_key
from adapt.report.paper import ODINW13_KEYS, PaperReference, load_paper

CellKey = tuple[str, str, Shots]  # task, mode, shots


@dataclass
class Cell:
    """AP of one model x task x mode x shots over seeds."""

    values: dict[int, float]
    expected_seeds: int = 0

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values.values())

    def std(self, ddof: int = 0) -> float | None:
        if len(self.values) < max(2, ddof + 1):
            return None
        vals = list(self.values.values())
        return statistics.pstdev(vals) if ddof == 0 else statistics.stdev(vals)

    @property
    def partial(self) -> bool:
        return self.n < self.expected_seeds


@dataclass
class Average:
    """The average over a dataset suite for one mode x shots, or the reason there is none."""

    mean: float | None
    std: float | None
    missing: list[str]
    seeds: list[int]


@dataclass
class ModelReport:
    """Everything the tables and plots need for one model."""

    model: str
    paper_model: str | None
    tasks: list[str]
    labels: dict[str, str]  # task -> its dataset name (the paper's column for ODinW tasks)
    modes: list[str]
    shots: list[Shots]
    mode_shots: dict[str, list[Shots]]  # the shots each mode has jobs for
    cells: dict[CellKey, Cell]
    averages: dict[tuple[str, str], Average]  # (mode, shots as str)
    suite: str  # "ODinW-13" or "mean over N tasks"
    suite_keys: list[str]
    mode_labels: dict[str, str] = field(default_factory=dict)  # mode -> its policy's report label
    # mode -> the distinct (trainable, total) parameter counts its runs recorded (results.json params)
    mode_params: dict[str, list[tuple[int, int]]] = field(default_factory=dict)

    def mode_title(self, mode: str) -> str:
        return self.mode_labels.get(mode, mode)

    def evaluates_at_zero(self, mode: str) -> bool:
        """Whether ``mode`` has runs of its own at shots=0: zero-shot, or another evaluation-only mode
        (a training mode never runs at shots=0, adapt.runs.config refuses it)."""
        return 0 in self.mode_shots.get(mode, ())

    def label(self, task: str) -> str:
        return self.labels.get(task, task)

    def paper_key(self, task: str) -> str | None:
        """The paper's column for a task, None when it is not one of ODinW-13."""
        label = self.labels.get(task)
        return label if label in ODINW13_KEYS else None

    def suite_key(self, task: str) -> str:
        return self.paper_key(task) or task if self.suite == "ODinW-13" else task


@dataclass
class Report:
    sweep_dir: Path
    jobs: list[Job]
    models: list[ModelReport]
    paper: PaperReference
    warnings: list[str]
    ddof: int = 0

    def by_status(self, status: str) -> list[Job]:
        return sorted((j for j in self.jobs if j.status == status), key=lambda j: j.sort_key)


def _average(mr: ModelReport, mode: str, shots: Shots, ddof: int) -> Average:
    """Equal-weight mean over the suite (glip_spec.md 4.6); std over seeds of per-seed averages."""
    per_key: dict[str, Cell] = {}
    for task in mr.tasks:
        cell = mr.cells.get((task, mode, shots))
        key = mr.suite_key(task)
        if cell is not None and cell.n and key in mr.suite_keys and key not in per_key:
            per_key[key] = cell
    missing = [k for k in mr.suite_keys if k not in per_key]
    if missing:
        return Average(None, None, missing, [])
    mean = statistics.fmean(c.mean for c in per_key.values())
    common = sorted(set.intersection(*(set(c.values) for c in per_key.values())))
    per_seed = [statistics.fmean(c.values[s] for c in per_key.values()) for s in common]
    std = Cell(dict(zip(common, per_seed, strict=True))).std(ddof) if per_seed else None
    return Average(mean, std, [], common)


def _cells(jobs: Sequence[Job]) -> dict[CellKey, Cell]:
    """Complete jobs' APs by cell and seed; each cell knows how many seeds the sweep asked for."""
    cells: dict[CellKey, Cell] = {}
    seeds: dict[CellKey, set[int]] = defaultdict(set)
    for job in jobs:
        p = job.point
        seeds[(p.task, p.mode, p.shots)].add(p.seed)
        if job.status == COMPLETE and job.ap is not None:
            cells.setdefault((p.task, p.mode, p.shots), Cell({})).values[p.seed] = job.ap
    for key, cell in cells.items():
        cell.expected_seeds = len(seeds[key])
    return cells


def _paper_model(jobs: Sequence[Job], forced: str | None, warnings: list[str]) -> str | None:
    if forced:
        return forced
    named = sorted({j.paper_model for j in jobs if j.paper_model})
    if len(named) > 1:
        warnings.append(f"jobs of {jobs[0].point.model} name several paper models {named}; using {named[0]}")
    return named[0] if named else None


def _mode_label(mode: str, jobs: Sequence[Job]) -> str:
    """The label the mode's policy gave its runs (results.json), else its configured policy's."""
    for j in jobs:
        if j.point.mode == mode and j.results and j.results.get("mode_label"):
            return str(j.results["mode_label"])
    from adapt.modes import mode_label

    return mode_label(mode)


def _mode_params(mode: str, jobs: Sequence[Job]) -> list[tuple[int, int]]:
    """The (trainable, total) parameter counts the mode's runs recorded, distinct, ascending
    (class-specific methods train more numbers on tasks with more classes)."""
    counts = set()
    for j in jobs:
        params = (j.results or {}).get("params") if j.point.mode == mode else None
        if isinstance(params, Mapping) and isinstance(params.get("trainable"), int):
            counts.add((int(params["trainable"]), int(params.get("total") or 0)))
    return sorted(counts)


def model_report(model: str, jobs: Sequence[Job], paper_model: str | None, ddof: int) -> ModelReport:
    """The cells, suite and averages of one model's jobs."""
    labels = {j.point.task: j.dataset for j in jobs if j.dataset}
    tasks = sorted({j.point.task for j in jobs}, key=lambda t: task_sort_key(t, labels.get(t)))
    odinw = any(labels.get(t) in ODINW13_KEYS for t in tasks)
    modes = sorted({j.point.mode for j in jobs}, key=mode_sort_key)
    mr = ModelReport(
        model=model,
        paper_model=paper_model,
        tasks=tasks,
        labels=labels,
        modes=modes,
        shots=sorted({j.point.shots for j in jobs}, key=shots_sort_key),
        mode_shots={
            m: sorted({j.point.shots for j in jobs if j.point.mode == m}, key=shots_sort_key) for m in modes
        },
        cells=_cells(jobs),
        averages={},
        suite="ODinW-13" if odinw else f"mean over {len(tasks)} tasks",
        suite_keys=list(ODINW13_KEYS) if odinw else list(tasks),
        mode_labels={m: _mode_label(m, jobs) for m in modes},
        mode_params={m: _mode_params(m, jobs) for m in modes},
    )
    for mode in mr.modes:
        for s in mr.shots:
            if any((t, mode, s) in mr.cells for t in mr.tasks):
                mr.averages[(mode, str(s))] = _average(mr, mode, s, ddof)
    return mr


def build_report(
    sweep_dir: str | os.PathLike[str],
    paper: PaperReference | None = None,
    paper_model: str | None = None,
    ddof: int = 0,
    tasks: Sequence[str] | None = None,
) -> Report:
    """Collect a sweep folder's jobs (manifest and results.json files) and aggregate them per model.

    ``tasks`` keeps only those tasks' jobs (the average is then over them): a folder that also
    holds side runs, such as the world's seen-word zero-shot checks beside its by-shots sweep, is
    reported on the benchmark's tasks alone. A task the folder does not hold is a ValueError.
    """
    paper = paper if paper is not None else load_paper()
    jobs, warnings = collect_jobs(sweep_dir)
    if tasks is not None:
        held = sorted({j.point.task for j in jobs})
        unknown = [t for t in tasks if t not in held]
        if unknown:
            raise ValueError(f"{sweep_dir}: no jobs of task {', '.join(unknown)}; it holds {', '.join(held)}")
        jobs = [j for j in jobs if j.point.task in tasks]
    by_model: Mapping[str, list[Job]] = defaultdict(list)
    for job in jobs:
        if not is_grounding(job.results or {}):  # grounding runs have their own table (report.grounding)
            by_model[job.point.model].append(job)
    models = [
        model_report(m, by_model[m], _paper_model(by_model[m], paper_model, warnings), ddof)
        for m in sorted(by_model)
    ]
    return Report(Path(sweep_dir), jobs, models, paper, warnings, ddof)
