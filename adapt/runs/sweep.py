"""Sweep bookkeeping that every training job goes through: what to skip, what is done, what failed.

The paper's protocol (glip_spec.md section 4) is not a Cartesian product: zero-shot is evaluated
once per task and model, and full-data ("all") runs once, while 1/3/5/10-shot runs once per seed.
Hydra's sweepers only know products, so the sweep yaml spans the product and `skip_reason` says
which points are redundant, or already complete in their `results.json`. It is asked twice: by
adapt's sweeper (`hydra_plugins/adapt_sweeper`, `hydra/sweeper=adapt_protocol`), which leaves
those points out of the launch, so SLURM never queues them; and by every job as it starts, so a
sweep under another sweeper still runs the protocol, and re-running the same command resumes it.

A failed job must not take the sweep down (Hydra re-raises a job's exception after its batch,
and the submitit launcher raises as soon as it collects a failed job), so `run_job` records the
traceback in the job's own `results.json` and returns; `adapt.report` lists it.

The training job (`adapt.run`) uses it as::

    @hydra.main(config_path="conf", config_name="config", version_base="1.3")
    def main(cfg):
        return sweep.run_job(cfg, train_and_evaluate)   # train_and_evaluate(cfg) -> anything
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import socket
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

from adapt.grid import (
    DEFAULT_CANONICAL_SEED,
    GridPoint,
    point_skip_reason,
)
from adapt.runs.record import RESULTS_FILE, composed_config, read_results, update_record

log = logging.getLogger(__name__)

T = TypeVar("T")


def _select(cfg: Any, key: str) -> Any:
    """OmegaConf.select that tolerates interpolations it cannot resolve outside a Hydra run."""
    try:
        return OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
    except Exception:  # a resolver such as ${hydra:...} missing outside Hydra
        return None


def hydra_choices() -> dict[str, str]:
    """The running Hydra job's config-group choices ({"task": "odinw/aquarium", ...}), or {}."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    return {str(k): str(v) for k, v in HydraConfig.get().runtime.choices.items() if v is not None}


def grid_point(cfg: DictConfig | Mapping[str, Any], choices: Mapping[str, Any] | None = None) -> GridPoint:
    """Read a job's grid coordinates.

    The config-group choices come first (`choices`, else the running Hydra job's), because they
    are what a sweep's overrides and folder names use (`task=odinw/aquarium`); outside Hydra the
    config's own keys stand in: `task.id` or `task.name`, `model.name`, `mode.name`. Shots and
    seed are plain values, `shots` (`shots.k` in configs from when shots was a group) and `seed`.
    """
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(dict(cfg))
    choices = dict(hydra_choices() if choices is None else choices)
    shots = (
        _select(cfg, "shots.k") if isinstance(_select(cfg, "shots"), DictConfig) else _select(cfg, "shots")
    )
    values = {
        "task": choices.get("task") or _select(cfg, "task.id") or _select(cfg, "task.name"),
        "model": choices.get("model") or _select(cfg, "model.name"),
        "mode": choices.get("mode") or _select(cfg, "mode.name"),
        "shots": choices.get("shots") or shots,
        "seed": _select(cfg, "seed"),
    }
    missing = [k for k, v in values.items() if v is None]
    if missing:
        raise KeyError(f"config lacks the sweep coordinates {missing} (see adapt/runs/sweep.py grid_point)")
    return GridPoint.from_fields(values)


def planned_points(
    sweep_yaml: str | os.PathLike[str], model: str, overrides: Sequence[str] = ()
) -> list[GridPoint]:
    """The jobs a `conf/sweep/*.yaml` grid runs for `model`, before any sweep ran (cost planning).

    The yaml's `hydra.sweeper.params`, then `overrides` (as on a command line, `mode=zero,lora`), are
    expanded by Hydra's own basic-sweeper code, as adapt's sweeper expands them, and collapsed by
    `point_skip_reason` with the yaml's canonical seed. A sweep that ran has its decisions in its
    manifest (`adapt.runs.manifest`); read that instead.
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    node = OmegaConf.load(Path(sweep_yaml))
    params = OmegaConf.select(node, "hydra.sweeper.params", default=None) or {}
    texts = [f"{key}={' '.join(str(value).split())}" for key, value in params.items()] + list(overrides)
    (jobs,) = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(texts), None)
    canonical = int(OmegaConf.select(node, "sweep.canonical_seed", default=DEFAULT_CANONICAL_SEED))
    points = []
    for job in jobs:
        values = dict(text.split("=", 1) for text in job)
        point = GridPoint.from_fields({**values, "model": model})
        if point_skip_reason(point, canonical) is None:
            points.append(point)
    return points


def in_sweep(cfg: DictConfig | Mapping[str, Any]) -> bool:
    """A job belongs to a protocol sweep when a `conf/sweep/*` file added its `sweep` node.

    Opting in through `+sweep=...` keeps single runs literal: `mode=zero shots=5` on its own is
    an explicit request and runs.
    """
    node = cfg.get("sweep") if isinstance(cfg, Mapping | DictConfig) else None
    return isinstance(node, Mapping | DictConfig)


def canonical_seed(cfg: DictConfig | Mapping[str, Any]) -> int:
    """The seed of the once-only runs, `sweep.canonical_seed` (default 3)."""
    node = cfg.get("sweep") if in_sweep(cfg) else None
    value = node.get("canonical_seed") if node is not None else None
    return DEFAULT_CANONICAL_SEED if value is None else int(value)


def completed(run_dir: str | os.PathLike[str]) -> bool:
    """True when the run folder holds a results.json with status "complete".

    Only "complete" counts: a "running" file is what a killed job (OOM, SLURM time limit)
    leaves behind, and a "failed" one should be retried when the sweep is re-run.
    """
    data = read_results(run_dir)
    return data is not None and data.get("status") == "complete"


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _host_info() -> dict[str, Any]:
    """Where the job ran: enough to find its SLURM log when it fails or hangs."""
    info: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
    for var in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        if var in os.environ:
            info[var.lower()] = os.environ[var]
    return info


def _point_fields(cfg: DictConfig | Mapping[str, Any] | None) -> dict[str, Any]:
    if cfg is None:
        return {}
    try:
        point = grid_point(cfg)
    except (KeyError, ValueError):
        return {}
    return {
        "task": point.task,
        "model": point.model,
        "mode": point.mode,
        "shots": point.shots,
        "seed": point.seed,
    }


# Fields that describe how an earlier attempt ended; a new attempt has not ended yet.
STALE_AT_START = ("error", "error_type", "failed_at", "test", "export", "best_step", "skipped_batches")


def record_start(run_dir: str | os.PathLike[str], cfg: DictConfig | Mapping[str, Any] | None = None) -> None:
    """Mark an attempt as started, so a job killed without a Python exception shows up as "running".

    `started_at`, `host`, `pid` and the SLURM ids stay in the file through the job's later writes
    (they merge, see adapt.runs.record). What an earlier attempt left is kept where a resumed run
    continues it (validation history, time so far) and dropped where it no longer holds: its error,
    and the fields only a complete run has.
    """
    update_record(
        run_dir,
        {"status": "running", **_point_fields(cfg), "started_at": _now(), **_host_info()},
        drop=STALE_AT_START,
    )


def record_failure(
    run_dir: str | os.PathLike[str],
    exc: BaseException,
    cfg: DictConfig | Mapping[str, Any] | None = None,
) -> Path:
    """Write results.json with status "failed" and the traceback, keeping what the run had logged.

    Fields already in the file (a "running" record with val_history, say) are kept, so the
    report can show how far the job got.
    """
    fields = _point_fields(cfg)
    if cfg is not None and "config" not in (read_results(run_dir) or {}):
        fields["config"] = composed_config(cfg)
    fields.update(
        status="failed",
        error="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        error_type=type(exc).__name__,
        failed_at=_now(),
        **_host_info(),
    )
    update_record(run_dir, fields)
    return Path(run_dir) / RESULTS_FILE


def skip_reason(
    cfg: DictConfig | Mapping[str, Any], run_dir: str | os.PathLike[str] | None = None
) -> str | None:
    """Why this job should exit at once, or None to run it.

    A run whose folder already has a complete results.json is skipped, in a sweep or not, so a
    re-run never destroys a result; `overwrite=true` (or `sweep.rerun_complete=true`) runs it
    again, after `archive_previous` moved the old result aside. Jobs of a protocol sweep
    (`+sweep=...`) are also skipped at redundant grid points (see `point_skip_reason`).
    `run_dir` defaults to the Hydra job's output folder.
    """
    if run_dir is None:
        run_dir = hydra_output_dir()
    point = grid_point(cfg) if in_sweep(cfg) else None
    return decide(point, run_dir, canonical_seed(cfg), overwrite_requested(cfg), evaluates_only(cfg))


def decide(
    point: GridPoint | None,
    run_dir: str | os.PathLike[str] | None,
    canonical: int = DEFAULT_CANONICAL_SEED,
    overwrite: bool = False,
    evaluates: bool | None = None,
) -> str | None:
    """The skip rule itself, on values: ``point`` (None outside a protocol sweep), the job's folder,
    the canonical seed, whether overwriting was asked for, and whether the mode only evaluates.

    The job (through :func:`skip_reason`) and adapt's sweeper (which knows these values without
    composing every point) both ask here, so they cannot disagree.
    """
    if point is not None:
        reason = point_skip_reason(point, canonical, evaluates)
        if reason is not None:
            return f"redundant grid point: {reason}"
    if run_dir is not None and not overwrite and completed(run_dir):
        return (
            f"already complete: the result is in {Path(run_dir) / RESULTS_FILE} "
            "(overwrite=true runs it again and keeps the old result under previous/)"
        )
    return None


def evaluates_only(cfg: DictConfig | Mapping[str, Any]) -> bool | None:
    """Whether the job's mode trains nothing (``mode.evaluates_only``, set by ``conf/mode/zero.yaml``
    and its variants; the job checks it against the mode's policy), or None when the mode does not
    say (then the mode name ``zero`` decides). Read from the config, so the sweeper decides without
    importing any model code."""
    value = _select(cfg, "mode.evaluates_only")
    return None if value is None else bool(value)


def overwrite_requested(cfg: DictConfig | Mapping[str, Any]) -> bool:
    """`overwrite=true`, or a sweep's `sweep.rerun_complete=true`."""
    value = _select(cfg, "overwrite")
    if str(value).strip().lower() in ("true", "1", "yes"):
        return True
    return in_sweep(cfg) and bool(_select(cfg, "sweep.rerun_complete") or False)


# What a complete run leaves in its folder, moved aside before it runs again.
PREVIOUS_DIR = "previous"
RESULT_FILES = (RESULTS_FILE, "export", "test_detections.json", "checkpoints")


def archive_previous(run_dir: str | os.PathLike[str]) -> Path | None:
    """Move a complete run's results.json, export, detections and checkpoints to previous/<time>/.

    Called before an overwrite, so the old result survives even when the new attempt fails; the
    checkpoints go too, or `resume=auto` would continue the finished run instead of redoing it.
    """
    folder = Path(run_dir)
    if not completed(folder):
        return None
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    target = folder / PREVIOUS_DIR / stamp
    target.mkdir(parents=True)
    for name in RESULT_FILES:
        if (folder / name).exists():
            os.replace(folder / name, target / name)
    log.warning("overwrite: the previous result of %s is kept in %s", folder, target)
    return target


def hydra_output_dir() -> Path | None:
    """The running Hydra job's output folder, or None outside a Hydra job."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return Path(HydraConfig.get().runtime.output_dir)


def run_job(
    cfg: DictConfig,
    job: Callable[[DictConfig], T],
    run_dir: str | os.PathLike[str] | None = None,
) -> T | None:
    """Run `job(cfg)` under the sweep rules: skip, mark started, record a failure and move on.

    Inside a protocol sweep a failure is recorded and swallowed so the remaining jobs run
    whatever the launcher; outside one it is recorded and re-raised, because a user running a
    single job wants the traceback and a non-zero exit status.
    """
    run_dir = Path(run_dir) if run_dir is not None else hydra_output_dir()
    reason = skip_reason(cfg, run_dir)
    if reason is not None:
        log.warning("skipping %s: %s", run_dir, reason)
        return None
    if run_dir is not None:
        archive_previous(run_dir)  # only when overwrite let a complete run through
    if run_dir is not None and in_sweep(cfg):
        record_start(run_dir, cfg)
    try:
        result = job(cfg)
    except Exception as exc:
        if run_dir is None:
            raise
        try:
            path = record_failure(run_dir, exc, cfg)
        except OSError as write_error:  # a full or read-only disk: the error itself says so
            log.error("could not record the failure in %s: %s", run_dir, write_error)
            path = Path(run_dir) / RESULTS_FILE
        if not in_sweep(cfg):
            raise
        log.error("job failed (%s: %s); recorded in %s, the sweep goes on", type(exc).__name__, exc, path)
        return None
    if run_dir is not None and in_sweep(cfg) and not completed(run_dir):
        # Otherwise every re-run would silently train this job again.
        log.warning("job returned without a complete %s in %s", RESULTS_FILE, run_dir)
    return result
