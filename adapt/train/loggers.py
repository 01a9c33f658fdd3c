"""Experiment loggers: whatever Lightning logger ``conf/logger`` names, one run per job.

The logger node is a ``_target_`` config built with ``hydra.utils.instantiate`` (``logger=csv``,
``tensorboard``, ``wandb``, or a file of your own under ``conf/logger/``); ``logger=none`` is an
empty node. Whatever happens in the job, the logger is finalized in ``close_logger`` (and a wandb
run finished), so a failed job in a multirun does not leave the next job attached to a dangling
wandb run.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from omegaconf import DictConfig, OmegaConf

from adapt.atomic import atomic_path

log = logging.getLogger(__name__)


def build_logger(cfg: DictConfig, run_dir: Path) -> Any:
    """The Lightning logger of ``cfg.logger`` (None when the node is empty: ``logger=none``).

    ``save_dir`` is the run folder unless the node sets its own: it is known only at run time
    (the same job config runs in many folders in a sweep), so it cannot be written in the YAML.
    """
    node = cfg.get("logger")
    if not node:
        return None
    logger = instantiate(node, **({} if node.get("save_dir") else {"save_dir": str(run_dir)}))
    try:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    except Exception:  # an unresolvable interpolation must not stop the job
        log.debug("could not log the resolved config to %s", type(logger).__name__, exc_info=True)
    return logger


def close_logger(logger: Any) -> None:
    """Flush and close; for wandb, finish the run even when the job failed."""
    if logger is None:
        return
    try:
        logger.finalize("success")
    except Exception:
        log.debug("logger finalize failed", exc_info=True)
    if type(logger).__name__ == "WandbLogger":
        import wandb

        if wandb.run is not None:
            wandb.finish()


class CSVLogger(LightningCSVLogger):
    """Lightning's CSVLogger, except that a resumed run appends to its ``metrics.csv``.

    Lightning's writer deletes an existing ``metrics.csv`` when it starts, so a run resumed after
    a kill would keep only the rows logged after the resume. This one keeps the file, and lets the
    first rows the run logs say where it (re)starts (see ``_AppendingWriter``).
    """

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        assert isinstance(self._experiment, ExperimentWriter)  # only this property sets it
        return self._experiment

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        # Rows are buffered (flush_logs_every_n_steps); write them with every resume point, so a
        # run killed outright (SIGKILL, a preempted node) still has every row up to its checkpoint.
        self.save()


class _AppendingWriter(ExperimentWriter):
    """Keeps the rows of an earlier attempt that come before this attempt's first logged step.

    A run resumed from a checkpoint at step N logs again from step N + 1: the earlier rows up to
    N stay, rows after N (logged after that checkpoint, before the kill) are replaced by the
    new ones. A run that starts over logs from step 0, so nothing of the earlier attempt stays.
    """

    def __init__(self, log_dir: str) -> None:
        self._earlier: list[dict[str, str]] | None = None
        self._earlier_keys: list[str] = []
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:
        # Lightning deletes metrics.csv here; read it instead, reconciled on the first save().
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                reader = csv.DictReader(f)
                self._earlier = list(reader)
                self._earlier_keys = list(reader.fieldnames or [])

    def save(self) -> None:
        if self._earlier is not None and self.metrics:
            first = min(int(m["step"]) for m in self.metrics)
            kept = [row for row in self._earlier if _step(row) < first]
            self.metrics_keys = sorted(self._earlier_keys)
            path = self.metrics_file_path
            with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=self.metrics_keys)
                writer.writeheader()
                writer.writerows(kept)
            self._earlier = None
        super().save()


def _step(row: Mapping[str, str]) -> float:
    try:
        return float(row.get("step") or "nan")
    except ValueError:
        return float("nan")
