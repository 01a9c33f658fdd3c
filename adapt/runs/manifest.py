"""The sweep manifest: what adapt's sweeper decided for every grid point, in the sweep folder.

adapt's sweeper (`hydra_plugins/adapt_sweeper`) composes every point of a sweep's grid and decides
whether to launch it; this file is that decision, written once per sweep folder as
``sweep_manifest.json``, so that nothing downstream re-derives the grid: `adapt.report` and
`benchmarks/odinw/cost.py` read the manifest and the jobs' results.json files and nothing else.

Format (``"format": 1``)::

    {"format": 1, "updated_at": "2026-01-01T00:00:00+00:00",
     "invocations": [{"at": ..., "host": ..., "pid": ..., "overrides": ["+sweep=odinw13", ...],
                      "launcher": "hydra._internal...BasicLauncher", "dry_run": false,
                      "points": 936, "launched": 520}],
     "jobs": [{"folder": "odinw/aquarium/prompt/shots5_seed3",     # relative to the manifest
               "overrides": ["task=odinw/aquarium", "shots=5", "mode=prompt", "seed=3"],
               "task": "odinw/aquarium", "model": "glip_t", "mode": "prompt", "shots": 5, "seed": 3,
               "dataset": "Aquarium", "paper_model": "GLIP-T",      # task.name, model.paper
               "decision": "launched", "reason": null, "decided_at": ...,
               "job_id": "123456_7", "job_status": "COMPLETED"}]}

``decision`` is ``launched``, ``dry_run`` (would launch; `sweep.dry_run=true`), ``complete`` (not
launched: its results.json is complete) or ``redundant`` (not launched: the protocol collapses the
point, see `adapt.grid.point_skip_reason`), with the sweeper's words in ``reason``. ``job_id`` is
the launcher's id of the job (Hydra's ``hydra.job.id``: the SLURM job id under submitit, a job
number under the basic and joblib launchers), filled in when the launcher returns.

Re-running a sweep into the same folder merges: each folder's entry is replaced by the newest
decision, and a job's id stays with its folder until the folder is launched again.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapt.atomic import write_json
from adapt.grid import GridPoint

MANIFEST_FILE = "sweep_manifest.json"
FORMAT = 1
LAUNCHED, DRY_RUN, COMPLETE, REDUNDANT = "launched", "dry_run", "complete", "redundant"
# Decisions whose point is a job of the sweep (a redundant point is not).
EXPECTED = (LAUNCHED, DRY_RUN, COMPLETE)
_JOB_FIELDS = ("job_id", "job_status", "returned_at")


class ManifestError(ValueError):
    """A sweep_manifest.json that cannot be read as this format."""


@dataclass(frozen=True)
class ManifestJob:
    """One grid point of a sweep as its manifest records it."""

    point: GridPoint
    folder: Path  # absolute
    decision: str
    reason: str | None = None
    overrides: tuple[str, ...] = ()
    dataset: str | None = None
    paper_model: str | None = None
    job_id: str | None = None
    job_status: str | None = None

    @property
    def expected(self) -> bool:
        return self.decision in EXPECTED


def now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def decision_of(skip_reason: str | None, dry_run: bool) -> str:
    """The manifest's decision for a point, from `adapt.runs.sweep.skip_reason`'s answer."""
    if skip_reason is None:
        return DRY_RUN if dry_run else LAUNCHED
    return REDUNDANT if skip_reason.startswith("redundant") else COMPLETE


def _load(path: Path) -> dict[str, Any]:
    try:
        with path.open(encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return {"format": FORMAT, "invocations": [], "jobs": []}
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{path}: unreadable sweep manifest ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("jobs"), list):
        raise ManifestError(f"{path}: not a sweep manifest of format {FORMAT}")
    return data


def record_decisions(
    sweep_root: str | os.PathLike[str], jobs: Iterable[Mapping[str, Any]], invocation: Mapping[str, Any]
) -> Path:
    """Merge one invocation's decisions (entries keyed by ``folder``) into the root's manifest."""
    path = Path(sweep_root) / MANIFEST_FILE
    data: dict[str, Any] = _load(path) if path.exists() else {"format": FORMAT, "invocations": [], "jobs": []}
    by_folder = {str(entry["folder"]): entry for entry in data["jobs"]}
    for job in jobs:
        old = by_folder.get(str(job["folder"]), {})
        kept = {} if job["decision"] == LAUNCHED else {k: old[k] for k in _JOB_FIELDS if k in old}
        by_folder[str(job["folder"])] = {**dict(job), **kept}
    data["jobs"] = sorted(by_folder.values(), key=lambda e: str(e["folder"]))
    data["invocations"] = [*data.get("invocations", []), dict(invocation)]
    data["updated_at"] = now()
    write_json(data, path)
    return path


def record_returns(sweep_root: str | os.PathLike[str], returns: Mapping[str, Mapping[str, Any]]) -> Path:
    """Add what the launcher returned (``job_id``, ``job_status``) to the entries of these folders."""
    path = Path(sweep_root) / MANIFEST_FILE
    data = _load(path)
    for entry in data["jobs"]:
        got = returns.get(str(entry["folder"]))
        if got is not None:
            entry.update(got, returned_at=now())
    data["updated_at"] = now()
    write_json(data, path)
    return path


def read_manifest(path: str | os.PathLike[str]) -> list[ManifestJob]:
    """Every grid point a manifest lists, with its folder made absolute."""
    path = Path(path)
    root = path.parent.resolve()
    jobs = []
    for entry in _load(path)["jobs"]:
        try:
            point = GridPoint.from_fields(entry)
            jobs.append(
                ManifestJob(
                    point=point,
                    folder=_inside(root, str(entry["folder"]), path),
                    decision=str(entry["decision"]),
                    reason=entry.get("reason"),
                    overrides=tuple(entry.get("overrides") or ()),
                    dataset=entry.get("dataset"),
                    paper_model=entry.get("paper_model"),
                    job_id=None if entry.get("job_id") is None else str(entry["job_id"]),
                    job_status=entry.get("job_status"),
                )
            )
        except ManifestError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"{path}: malformed entry {entry!r} ({exc})") from exc
    return jobs


def _inside(root: Path, folder: str, path: Path) -> Path:
    """``root / folder``, which must stay inside the sweep folder (a received manifest is data)."""
    target = (root / folder).resolve()
    if not target.is_relative_to(root):
        raise ManifestError(f"{path}: job folder {folder!r} points outside the sweep folder {root}")
    return target


def find_manifests(sweep_dir: str | os.PathLike[str]) -> list[Path]:
    """The manifests in and under a sweep folder (one per model when the folder holds several)."""
    return sorted(Path(sweep_dir).rglob(MANIFEST_FILE))
