"""Hydra's basic sweeper, launching only the jobs that adapt's protocol would run.

The paper's ODinW protocol is not a Cartesian product (zero-shot once per task, full data once),
and a resumed sweep should not queue the jobs it already finished. Filtering here, before the
launcher sees the batch, keeps those points out of SLURM arrays and joblib pools altogether:
`adapt.runs.sweep.skip_reason` is asked for every composed job config, exactly as the job itself
would ask it, so the sweeper and the job cannot disagree.

Every decision (launch, or skip and why) goes into the sweep folder's manifest
(`adapt.runs.manifest`, `sweep_manifest.json`) before anything is launched, and the launcher's job ids
are added as its batches return; the report and the cost estimate read that file.

No `from __future__ import annotations` here: Hydra's plugin scan executes this module without
registering it in sys.modules, where dataclasses look string annotations up.
"""

import logging
import os
import re
import socket
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.types import Override
from hydra.core.utils import JobReturn
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from adapt.grid import GridPoint
from adapt.resolvers import run_suffix
from adapt.runs import manifest
from adapt.runs import sweep as protocol

log = logging.getLogger(__name__)


@dataclass
class ProtocolSweeperConf(BasicSweeperConf):
    _target_: str = "hydra_plugins.adapt_sweeper.protocol_sweeper.ProtocolSweeper"


ConfigStore.instance().store(
    group="hydra/sweeper", name="adapt_protocol", node=ProtocolSweeperConf, provider="adapt"
)


class ProtocolSweeper(BasicSweeper):
    """Expands the product like `BasicSweeper`, then drops what `adapt.runs.sweep.skip_reason` skips."""

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
        planner = _Planner(self.config, self.hydra_context.config_loader, points)
        kept: list[list[str]] = []
        reasons: Counter = Counter()
        entries: dict[Path, list[dict[str, Any]]] = defaultdict(list)
        for overrides in points:
            reason, entry = planner.decide(overrides, dry_run)
            self._composed.add(tuple(overrides))
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
            "adapt sweep: %d grid points (%d configurations composed), %d jobs to launch%s",
            len(points),
            planner.compositions,
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


# Plain values that only name a job's folder and seed its draws: points differing only in these share
# their composed configuration.
_PLAIN_VALUES = ("shots", "seed")


class _Planner:
    """Decides launch or skip for every grid point, composing once per configuration that matters.

    The decision reads few things: the grid values (in the point's overrides), the task's and the
    model's paper names, whether the mode trains (``mode.evaluates_only``), the sweep's rules
    (``sweep.*``, ``overwrite``) and the job's folder (Hydra's ``hydra.sweep.dir``/``subdir``
    templates resolved with the point's choices, values and overrides). When the grid varies only
    config-group choices (``task``, ``mode``, ``model``, ...) and plain values (``shots``, ``seed``),
    each of those depends on one choice alone, so one composition per distinct choice serves every
    point (the ODinW-13 grid: 18 compositions for 936 points, where composing each point took about
    two minutes). A grid over other keys composes once per distinct non-plain override set, and a
    folder template that reads anything beyond the grid values composes the point itself, exactly
    as the launcher will.
    """

    def __init__(self, master: DictConfig, loader: Any, points: Sequence[Sequence[str]]) -> None:
        self.master = master
        self.loader = loader
        self.compositions = 0
        self._cache: dict[tuple[str, ...], _Group | None] = {}
        self._points: dict[tuple[str, ...], _Group | None] = {}
        groups = set(OmegaConf.select(master, "hydra.runtime.choices", default={}) or {})
        varying = {_key(o) for p in points for o in p if _key(o) not in _PLAIN_VALUES}
        varying = {k for k in varying if len({o for p in points for o in p if _key(o) == k}) > 1}
        self.base = list(points[0]) if points else []
        self.factorized = bool(points) and varying <= groups
        # sweep.compose_every_point=true: the launcher's way for every point (slow; a cross-check)
        self.compose_every_point = bool(OmegaConf.select(master, "sweep.compose_every_point", default=False))

    def _compose(self, overrides: Sequence[str]) -> DictConfig:
        self.compositions += 1
        return self.loader.load_sweep_config(self.master, list(overrides))

    def _composed_group(self, overrides: Sequence[str]) -> "_Group | None":
        key = tuple(o for o in overrides if _key(o) not in _PLAIN_VALUES)
        if key not in self._cache:
            self._cache[key] = _Group.of(self._compose(list(key)))
        return self._cache[key]

    def _group(self, overrides: Sequence[str]) -> "_Group | None":
        """The decision inputs of the point's configuration (shared by points differing in plain values)."""
        key = tuple(o for o in overrides if _key(o) not in _PLAIN_VALUES)
        if key in self._points:
            return self._points[key]
        if not self.factorized:
            group = self._composed_group(overrides)
        else:
            group = self._composed_group(self.base)
            for override in key:
                name = _key(override)
                if group is None or override in self.base:
                    continue
                alone = self._composed_group([o for o in self.base if _key(o) != name] + [override])
                group = None if alone is None else group.with_choice(name, alone)
        self._points[key] = group
        return group

    def decide(
        self, overrides: list[str], dry_run: bool
    ) -> tuple[str | None, tuple[Path, dict[str, Any]] | None]:
        if self.compose_every_point:
            return self._decide_composed(overrides, dry_run)
        group = self._group(overrides)
        values = {_key(o): o.split("=", 1)[1] for o in overrides if "=" in o}
        shots, seed = values.get("shots", group.shots if group else None), values.get("seed")
        seed = seed if seed is not None else (group.seed if group else None)
        folder = None if group is None else group.folder(overrides, shots, seed)
        if group is None or folder is None:  # a template beyond the grid values: compose the point
            return self._decide_composed(overrides, dry_run)
        point = GridPoint.from_fields({**group.grid_choices, "shots": shots, "seed": seed})
        reason = protocol.decide(
            point if group.in_sweep else None,
            folder[0] / folder[1],
            group.canonical_seed,
            group.overwrite,
            group.evaluates_only,
        )
        entry = _entry(point, folder[1], overrides, reason, dry_run, group.dataset, group.paper_model)
        return reason, (folder[0], entry)

    def _decide_composed(
        self, overrides: list[str], dry_run: bool
    ) -> tuple[str | None, tuple[Path, dict[str, Any]] | None]:
        """Compose the job's config as the launcher will, ask the protocol about it, and describe
        the decision for the manifest (None when the job's folder cannot be known before launch).

        The launcher makes the job's config the current HydraConfig before it resolves the job's
        folder (`${hydra:runtime.choices.task}` reads it); the same is done here, then undone.
        """
        job_cfg = self._compose(overrides)
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
        dataset, paper = _select(job_cfg, "task.name"), _select(job_cfg, "model.paper")
        return reason, (folder[0], _entry(point, folder[1], overrides, reason, dry_run, dataset, paper))


# What a config group's choice alone decides, of the decision's inputs.
_BY_GROUP = {"task": ("dataset",), "model": ("paper_model",), "mode": ("evaluates_only",)}


@dataclass(frozen=True)
class _Group:
    """What the decision reads from one composed configuration."""

    choices: dict[str, str]
    shots: Any
    seed: Any
    in_sweep: bool
    canonical_seed: int
    overwrite: bool
    evaluates_only: bool | None
    dataset: str | None
    paper_model: str | None
    sweep: dict[str, Any]
    exclude_keys: tuple[str, ...]
    templates: tuple[str, str]  # hydra.sweep.dir and subdir, unresolved

    @classmethod
    def of(cls, cfg: DictConfig) -> "_Group | None":
        folder, sub = _raw(cfg, "hydra.sweep.dir"), _raw(cfg, "hydra.sweep.subdir")
        if folder is None:
            return None
        sweep = OmegaConf.select(cfg, "sweep", default=None)
        return cls(
            choices={str(k): str(v) for k, v in cfg.hydra.runtime.choices.items() if v is not None},
            shots=OmegaConf.select(cfg, "shots"),
            seed=OmegaConf.select(cfg, "seed"),
            in_sweep=protocol.in_sweep(cfg),
            canonical_seed=protocol.canonical_seed(cfg),
            overwrite=protocol.overwrite_requested(cfg),
            evaluates_only=protocol.evaluates_only(cfg),
            dataset=_select(cfg, "task.name"),
            paper_model=_select(cfg, "model.paper"),
            sweep=OmegaConf.to_container(sweep, resolve=True) if isinstance(sweep, DictConfig) else {},
            exclude_keys=tuple(_exclude_keys(cfg)),
            templates=(folder, sub or ""),
        )

    @property
    def grid_choices(self) -> dict[str, str]:
        return {k: self.choices[k] for k in ("task", "model", "mode")}

    def with_choice(self, group: str, other: "_Group") -> "_Group":
        """This configuration with ``group`` chosen as in ``other`` (what that choice alone decides)."""
        fields = {name: getattr(other, name) for name in _BY_GROUP.get(group, ())}
        return replace(self, choices={**self.choices, group: other.choices[group]}, **fields)

    def folder(self, overrides: Sequence[str], shots: Any, seed: Any) -> tuple[Path, str] | None:
        """The point's sweep folder and subfolder, or None if the templates read more than the grid."""
        try:
            return tuple(  # type: ignore[return-value]
                f(_render(t, self, overrides, shots, seed))
                for f, t in zip((Path, str), self.templates, strict=True)
            )
        except _Unresolvable:
            return None


class _Unresolvable(Exception):
    """A folder template reads something besides the grid values."""


# The run-folder suffix of conf/config.yaml and conf/sweep/*.yaml, with the job's own overrides.
_SUFFIX = re.compile(
    r"\$\{adapt_run_suffix:\$\{hydra[:.]overrides\.task\},\$\{hydra[:.]job\.config\.override_dirname\.exclude_keys\}\}"
)
_FLAT = re.compile(r"\$\{([^${}]+)\}")


def _render(template: str, group: _Group, overrides: Sequence[str], shots: Any, seed: Any) -> str:
    """A folder template with the point's values in place of its interpolations (as Hydra resolves
    them for the job); anything else raises :class:`_Unresolvable`."""
    text = _SUFFIX.sub(lambda _: run_suffix(overrides, group.exclude_keys), template)

    def value(match: re.Match[str]) -> str:
        key = match.group(1)
        for prefix in ("hydra:runtime.choices.", "hydra.runtime.choices."):
            if key.startswith(prefix) and key[len(prefix) :] in group.choices:
                return group.choices[key[len(prefix) :]]
        if key in ("shots", "seed"):
            return str(shots if key == "shots" else seed)
        if key.startswith("sweep.") and isinstance(group.sweep.get(key[6:]), str | int | float):
            return str(group.sweep[key[6:]])
        raise _Unresolvable(key)

    text = _FLAT.sub(value, text)
    if "${" in text:
        raise _Unresolvable(text)
    return text


def _entry(
    point: GridPoint,
    folder: str,
    overrides: Sequence[str],
    reason: str | None,
    dry_run: bool,
    dataset: str | None,
    paper_model: str | None,
) -> dict[str, Any]:
    """The manifest entry of one grid point (adapt.runs.manifest's format)."""
    return {
        "folder": folder,
        "overrides": list(overrides),
        "task": point.task,
        "model": point.model,
        "mode": point.mode,
        "shots": point.shots,
        "seed": point.seed,
        "dataset": dataset,
        "paper_model": paper_model,
        "decision": manifest.decision_of(reason, dry_run),
        "reason": reason,
        "decided_at": manifest.now(),
    }


def _key(override: str) -> str:
    return override.split("=", 1)[0].strip().lstrip("+~")


def _raw(cfg: DictConfig, key: str) -> str | None:
    """The unresolved text of a config value (its interpolations kept)."""
    parent, _, leaf = key.rpartition(".")
    try:
        container = OmegaConf.select(cfg, parent)
        value = container._get_node(leaf)._value() if container is not None else None
    except Exception:
        return None
    return None if value is None else str(value)


def _exclude_keys(cfg: DictConfig) -> list[str]:
    keys = OmegaConf.select(cfg, "hydra.job.config.override_dirname.exclude_keys", default=[]) or []
    return [str(k) for k in keys]


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
