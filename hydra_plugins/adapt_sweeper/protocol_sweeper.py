"""Hydra's basic sweeper, launching only the jobs that adapt's protocol would run.

The paper's ODinW protocol is not a Cartesian product (zero-shot once per task, full data once),
and a resumed sweep should not queue the jobs it already finished. Filtering here, before the
launcher sees the batch, keeps those points out of SLURM arrays and joblib pools altogether:
`adapt.sweep.skip_reason` is asked for every composed job config, exactly as the job itself
would ask it, so the sweeper and the job cannot disagree.

No `from __future__ import annotations` here: Hydra's plugin scan executes this module without
registering it in sys.modules, where dataclasses look string annotations up.
"""

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf

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
        self._composed: set[tuple[str, ...]] = set()

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Every launched job was already composed by `_skip_reason`: composing it again (about
        0.2 s per job) would only repeat that check."""
        fresh = [job for job in batch if tuple(job) not in self._composed]
        if fresh:
            super().validate_batch_is_legal(fresh)

    def split_arguments(  # type: ignore[override]  # BasicSweeper calls it through self
        self, overrides: list[Override], max_batch_size: int | None
    ) -> list[list[list[str]]]:
        (points,) = BasicSweeper.split_arguments(overrides, None)
        jobs = self._launchable(points)
        if OmegaConf.select(self.config, "sweep.dry_run", default=False):
            for job in jobs:
                log.info("would launch: %s", " ".join(job))
            log.info("dry run (sweep.dry_run=true): nothing launched")
            return []
        size = max_batch_size or len(jobs) or 1
        return [jobs[i : i + size] for i in range(0, len(jobs), size)]

    def _launchable(self, points: Sequence[list[str]]) -> list[list[str]]:
        assert self.hydra_context is not None and self.config is not None
        kept: list[list[str]] = []
        reasons: Counter[str] = Counter()
        for overrides in points:
            reason = self._skip_reason(overrides)
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
        return kept

    def _skip_reason(self, overrides: list[str]) -> str | None:
        """Compose the job's config as the launcher will, and ask the protocol about it.

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
            return protocol.skip_reason(job_cfg, _job_dir(job_cfg))
        finally:
            hydra_config.cfg = master


def _job_dir(job_cfg: DictConfig) -> Path | None:
    """The folder Hydra's run_job will give this job, or None if it cannot be known yet."""
    try:
        root = OmegaConf.select(job_cfg, "hydra.sweep.dir")
        sub = OmegaConf.select(job_cfg, "hydra.sweep.subdir")
    except Exception:  # e.g. a subdir built from hydra.job.num, which only the launcher sets
        return None
    return None if root is None else Path(str(root)) / str(sub or "")
