"""Hydra's basic sweeper, launching only the jobs that adapt's protocol would run.

The paper's ODinW protocol is not a Cartesian product (zero-shot once per task, full data once),
and a resumed sweep should not queue the jobs it already finished. Filtering here, before the
launcher sees the batch, keeps those points out of SLURM arrays and joblib pools altogether:
`adapt.sweep.skip_reason` is asked for every composed job config, exactly as the job itself
would ask it, so the sweeper and the job cannot disagree.

Every decision (launch, or skip and why) goes into the sweep folder's manifest
(`adapt.manifest`, `sweep_manifest.json`) before anything is launched, and the launcher's job ids
are added as its batches return; the report and the cost estimate read that file.

No `from __future__ import annotations` here: Hydra's plugin scan executes this module without
registering it in sys.modules, where dataclasses look string annotations up.
"""

import logging
import os
import socket
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.types import Override
from hydra.core.utils import JobReturn
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from adapt import manifest
from adapt import sweep as protocol

log = logging.getLogger(__name__)


@dataclass
class ProtocolSweeperConf(BasicSweeperConf):
    _target_: str = "hydra_plugins.adapt_sweeper.protocol_sweeper.ProtocolSweeper"


ConfigStore.instance().store(
    group="hydra/sweeper", name="adapt_protocol", node=ProtocolSweeperConf, provider="adapt"
)


class ProtocolSweeper(BasicSweeper):
    """Expands the product like `BasicSweeper`, then drops what `adapt.sweep.skip_reason` skips."""

    def __init__(self, max_batch_size: int | None, params: dict[str, str] | None = None) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self._composed: set = set()
        # overrides of a launched job -> (manifest folder, folder relative to it)
        self._folders: dict[tuple[str, ...], tuple[Path, str]] = {}

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.launcher = _RecordingLauncher(self.launcher, self._folders)

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Every launched job was already composed by `_decide`: composing it again (about
        0.2 s per job) would only repeat that check."""
        fresh = [job for job in batch if tuple(job) not in self._composed]
        if fresh:
            super().validate_batch_is_legal(fresh)

    def split_arguments(  # type: ignore[override]  # BasicSweeper calls it through self
        self, overrides: list[Override], max_batch_size: int | None
    ) -> list[list[list[str]]]:
        (points,) = BasicSweeper.split_arguments(overrides, None)
        dry_run = bool(OmegaConf.select(self.config, "sweep.dry_run", default=False))
        jobs = self._launchable(points, dry_run)
        if dry_run:
            for job in jobs:
                log.info("would launch: %s", " ".join(job))
            log.info("dry run (sweep.dry_run=true): nothing launched")
            return []
        size = max_batch_size or len(jobs) or 1
        return [jobs[i : i + size] for i in range(0, len(jobs), size)]

    def _launchable(self, points: Sequence[list[str]], dry_run: bool) -> list[list[str]]:
        assert self.hydra_context is not None and self.config is not None
        kept: list[list[str]] = []
        reasons: Counter = Counter()
        entries: dict[Path, list[dict[str, Any]]] = defaultdict(list)
        for overrides in points:
            reason, entry = self._decide(overrides, dry_run)
            if entry is not None:
                root, fields = entry
                entries[root].append(fields)
                if reason is None:
                    self._folders[tuple(overrides)] = (root, fields["folder"])
            if reason is None:
                kept.append(overrides)
            else:
                reasons[reason.split(":", 1)[0]] += 1
                log.debug("not launching %s: %s", " ".join(overrides), reason)
        skipped = ", ".join(f"{n} {why}" for why, n in sorted(reasons.items()))
        log.info(
            "adapt sweep: %d grid points, %d jobs to launch%s",
            len(points),
            len(kept),
            f" (skipped: {skipped})" if skipped else "",
        )
        invocation = {
            "at": manifest.now(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "overrides": list(OmegaConf.select(self.config, "hydra.overrides.task", default=[]) or []),
            "launcher": str(OmegaConf.select(self.config, "hydra.launcher._target_", default="")),
            "dry_run": dry_run,
            "points": len(points),
            "launched": 0 if dry_run else len(kept),
        }
        for root, fields in entries.items():
            path = manifest.record_decisions(root, fields, invocation)
            log.info("adapt sweep: decisions written to %s", path)
        return kept

    def _decide(
        self, overrides: list[str], dry_run: bool
    ) -> tuple[str | None, tuple[Path, dict[str, Any]] | None]:
        """Compose the job's config as the launcher will, ask the protocol about it, and describe
        the decision for the manifest (None when the job's folder cannot be known before launch).

        The launcher makes the job's config the current HydraConfig before it resolves the job's
        folder (`${hydra:runtime.choices.task}` reads it); the same is done here, then undone.
        """
        assert self.hydra_context is not None and self.config is not None
        job_cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        self._composed.add(tuple(overrides))
        hydra_config = HydraConfig.instance()
        master = hydra_config.cfg
        try:
            hydra_config.set_config(job_cfg)
            folder = _job_dir(job_cfg)
            reason = protocol.skip_reason(job_cfg, None if folder is None else folder[0] / folder[1])
            if folder is None:
                return reason, None
            point = protocol.grid_point(job_cfg)
        finally:
            hydra_config.cfg = master
        fields = {
            "folder": folder[1],
            "overrides": list(overrides),
            "task": point.task,
            "model": point.model,
            "mode": point.mode,
            "shots": point.shots,
            "seed": point.seed,
            "dataset": _select(job_cfg, "task.name"),
            "paper_model": _select(job_cfg, "model.paper"),
            "decision": manifest.decision_of(reason, dry_run),
            "reason": reason,
            "decided_at": manifest.now(),
        }
        return reason, (folder[0], fields)


class _RecordingLauncher:
    """The configured launcher, with each batch's job ids and statuses added to the manifest."""

    def __init__(self, inner: Any, folders: dict[tuple[str, ...], tuple[Path, str]]) -> None:
        self._inner = inner
        self._folders = folders

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        returns = self._inner.launch(job_overrides, initial_job_idx=initial_job_idx)
        by_root: dict[Path, dict[str, dict[str, Any]]] = defaultdict(dict)
        for ret in returns:
            where = self._folders.get(tuple(ret.overrides or ()))
            if where is None:
                continue
            job_id = OmegaConf.select(ret.hydra_cfg, "hydra.job.id", default=None) if ret.hydra_cfg else None
            by_root[where[0]][where[1]] = {
                "job_id": None if job_id is None else str(job_id),
                "job_status": ret.status.name,
            }
        for root, fields in by_root.items():
            manifest.record_returns(root, fields)
        return returns

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _select(cfg: DictConfig, key: str) -> Any:
    value = OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
    return None if value is None else str(value)


def _job_dir(job_cfg: DictConfig) -> tuple[Path, str] | None:
    """The sweep folder and subfolder Hydra's run_job will give this job, or None if they cannot
    be known yet."""
    try:
        root = OmegaConf.select(job_cfg, "hydra.sweep.dir")
        sub = OmegaConf.select(job_cfg, "hydra.sweep.subdir")
    except Exception:  # e.g. a subdir built from hydra.job.num, which only the launcher sets
        return None
    return None if root is None else (Path(str(root)), str(sub or ""))
