"""The jobs of a sweep folder: what its manifest planned, matched with the results.json files.

The sweep manifest (`adapt.runs.manifest`) lists every grid point with its folder and the sweeper's
decision; each job's results.json says how far it got. A planned job without a readable
results.json is "missing" (never started, or died before its first write); a results.json outside
any manifest (single runs gathered in one folder) is a job too, placed by its own fields.
"""

from __future__ import annotations

import os
import socket
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapt.grid import GridPoint, mode_sort_key, shots_sort_key
from adapt.report.paper import ODINW13_KEYS
from adapt.runs.manifest import LAUNCHED, ManifestError, ManifestJob, find_manifests, read_manifest
from adapt.runs.record import RESULTS_FILE, read_results
from adapt.runs.rundir import pid_alive

# Statuses of a job, in the order the report lists them.
COMPLETE, FAILED, RUNNING, DIED, MISSING = "complete", "failed", "running", "died", "missing"
STATUSES = (COMPLETE, FAILED, RUNNING, DIED, MISSING)


@dataclass
class Job:
    """One planned or found job."""

    point: GridPoint
    status: str
    ap: float | None = None
    path: Path | None = None
    error: str | None = None
    note: str | None = None
    dataset: str | None = None  # the task config's name: the paper's column for ODinW tasks
    paper_model: str | None = None  # the model config's paper row
    job_id: str | None = None
    results: dict[str, Any] | None = None

    @property
    def sort_key(self) -> tuple[Any, ...]:
        p = self.point
        return (
            p.model,
            task_sort_key(p.task, self.dataset),
            mode_sort_key(p.mode),
            shots_sort_key(p.shots),
            p.seed,
        )


def task_sort_key(task: str, dataset: str | None) -> tuple[int, str]:
    """ODinW tasks in the paper's column order, then the others by name."""
    if dataset in ODINW13_KEYS:
        return (ODINW13_KEYS.index(dataset), task)
    return (len(ODINW13_KEYS), task)


def _config_value(data: Mapping[str, Any], key: str) -> str | None:
    """A value of the composed config saved in results.json (`task.name`), or None."""
    node: Any = data.get("config")
    for part in key.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return None if node is None or isinstance(node, Mapping) else str(node)


def _point_of(data: Mapping[str, Any]) -> GridPoint | None:
    """Grid coordinates of a results.json outside any manifest: its own fields, else its config."""
    try:
        return GridPoint.from_fields(data)
    except (KeyError, TypeError, ValueError):
        pass
    # Plain JSON: the config block is read as data, never through OmegaConf (no interpolation, so a
    # received file's "${oc.env:...}" stays the string it is).
    shots = _config_value(data, "shots.k") or _config_value(data, "shots")
    fields = {
        "task": _config_value(data, "task.id") or _config_value(data, "task.name"),
        "model": _config_value(data, "model.name"),
        "mode": _config_value(data, "mode.name"),
        "shots": shots,
        "seed": _config_value(data, "seed"),
    }
    if any(v is None for v in fields.values()):
        return None
    try:
        return GridPoint.from_fields(fields)
    except (TypeError, ValueError):
        return None


def _test_ap(data: Mapping[str, Any]) -> float | None:
    test = data.get("test")
    value = test.get("ap") if isinstance(test, Mapping) else None
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def is_grounding(data: Mapping[str, Any]) -> bool:
    """Whether a results.json is a phrase-grounding run's (recalls in `test`, no AP; report.grounding)."""
    return data.get("task_type") == "grounding" or _config_value(data, "task.type") == "grounding"


def started_note(data: Mapping[str, Any]) -> str | None:
    """Where and when an attempt started: what a killed job leaves to find its log by."""
    if not data.get("started_at"):
        return None
    where = f" on {data['host']}" if data.get("host") else ""
    ids = [f"pid {data['pid']}"] if data.get("pid") is not None else []
    ids += [f"SLURM job {data['slurm_job_id']}"] if data.get("slurm_job_id") else []
    return f"started {data['started_at']}{where}" + (f" ({', '.join(ids)})" if ids else "")


def died(data: Mapping[str, Any]) -> bool:
    """A job that says "running" but whose process is gone from this host (kill -9, the OOM killer, a
    node's time limit): nothing will finish it. On another host liveness cannot be checked."""
    host, pid = data.get("host"), data.get("pid")
    if data.get("status") != RUNNING or host != socket.gethostname() or not isinstance(pid, int):
        return False
    return not pid_alive(pid)


def _job_from_results(data: dict[str, Any], run_dir: Path, planned: ManifestJob | None) -> Job | None:
    point = planned.point if planned is not None else _point_of(data)
    if point is None:
        return None
    status = str(data.get("status", RUNNING))
    status = status if status in (COMPLETE, FAILED, RUNNING) else RUNNING
    ap = _test_ap(data)
    error = str(data["error"]) if data.get("error") else None
    if status == COMPLETE and ap is None and not is_grounding(data):  # grounding: recalls, no AP
        status, error = FAILED, "status complete but no test.ap"
    note = started_note(data)
    if died(data):
        status, note = DIED, f"pid {data['pid']} on {data['host']} is no longer running ({note})"
    return Job(
        point=point,
        status=status,
        ap=ap if status == COMPLETE else None,
        path=run_dir,
        error=error,
        note=note,
        dataset=_config_value(data, "task.name") or (planned.dataset if planned else None),
        paper_model=_config_value(data, "model.paper") or (planned.paper_model if planned else None),
        job_id=planned.job_id if planned else None,
        results=data,
    )


def _missing(planned: ManifestJob) -> Job:
    if planned.folder.is_dir():
        note = "folder exists, no readable results.json"
    elif planned.decision == LAUNCHED:
        note = "launched" + (f" (job id {planned.job_id})" if planned.job_id else "") + ", never started"
    else:
        note = f"not launched ({planned.decision})"
    return Job(
        point=planned.point,
        status=MISSING,
        path=planned.folder,
        note=note,
        dataset=planned.dataset,
        paper_model=planned.paper_model,
        job_id=planned.job_id,
    )


def _planned(sweep_dir: Path, warnings: list[str]) -> tuple[dict[Path, ManifestJob], set[Path]]:
    """The manifests' expected jobs by folder, and the folders of redundant points."""
    expected: dict[Path, ManifestJob] = {}
    redundant: set[Path] = set()
    manifests = find_manifests(sweep_dir)
    if not manifests:
        warnings.append(f"no sweep manifest under {sweep_dir}: jobs that never started are not listed")
    for path in manifests:
        try:
            entries = read_manifest(path)
        except ManifestError as exc:
            warnings.append(str(exc))
            continue
        for entry in entries:
            if entry.expected:
                expected[entry.folder] = entry
            else:
                redundant.add(entry.folder)
    return expected, redundant


def collect_jobs(sweep_dir: str | os.PathLike[str]) -> tuple[list[Job], list[str]]:
    """Every job of the sweep folder: planned ones (complete, failed, running or missing) and found ones."""
    root = Path(sweep_dir).resolve()
    warnings: list[str] = []
    expected, redundant = _planned(root, warnings)
    jobs: list[Job] = []
    found: set[Path] = set()
    for results_path in sorted(root.rglob(RESULTS_FILE)):
        run_dir = results_path.parent
        if run_dir in redundant:
            continue
        data = read_results(run_dir)
        if data is None:
            warnings.append(f"unreadable {results_path}")
            continue
        job = _job_from_results(data, run_dir, expected.get(run_dir))
        if job is None:
            warnings.append(f"cannot tell task/model/mode/shots/seed of {results_path}")
            continue
        found.add(run_dir)
        jobs.append(job)
    jobs += [_missing(entry) for folder, entry in expected.items() if folder not in found]
    return _dedupe(jobs, warnings), warnings


def _dedupe(jobs: list[Job], warnings: list[str]) -> list[Job]:
    """One job per grid point: a complete one wins, then the most recently written folder."""
    rank = {status: i for i, status in enumerate(STATUSES)}
    by_point: dict[GridPoint, list[Job]] = defaultdict(list)
    for job in jobs:
        by_point[job.point].append(job)
    out = []
    for point, group in by_point.items():
        if len(group) > 1:
            warnings.append(
                f"{len(group)} folders for {describe(point)}: " + ", ".join(str(j.path) for j in group)
            )
        group.sort(key=lambda j: (rank[j.status], -_mtime(j.path)))
        out.append(group[0])
    return out


def describe(point: GridPoint) -> str:
    return f"{point.model} {point.task} {point.mode} shots={point.shots} seed={point.seed}"


def _mtime(path: Path | None) -> float:
    try:
        return (path / RESULTS_FILE).stat().st_mtime if path else 0.0
    except OSError:
        return 0.0
