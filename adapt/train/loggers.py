"""Experiment loggers: wandb (offline unless asked), CSV, or none; one wandb run per job.

wandb runs offline by default so that no account or network is needed (``wandb sync`` uploads a
run folder later); ``logger.offline=false`` logs online. Whatever happens in the job, the wandb run
is finished in ``close_logger``, so a failed job in a multirun does not leave the next job attached
to a dangling run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def run_name(cfg: DictConfig) -> str:
    """A readable run name: task, model, mode, shots, seed."""
    task = cfg.task.get("id") or cfg.task.get("name")
    return f"{task}/{cfg.model.name}/{cfg.mode.name}/shots{cfg.shots.k}/seed{cfg.seed}"


def build_logger(cfg: DictConfig, run_dir: Path) -> Any:
    """The Lightning logger chosen by ``conf/logger/<name>.yaml`` (None for ``logger=none``)."""
    node = cfg.get("logger") or {}
    name = str(node.get("name", "none"))
    if name == "none":
        return None
    if name == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=str(run_dir), name="csv", version="")
    if name == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        offline = bool(node.get("offline", True))
        logger = WandbLogger(
            name=run_name(cfg),
            project=node.get("project") or "adapt",
            entity=node.get("entity"),
            save_dir=str(run_dir),
            offline=offline,
            tags=[str(cfg.mode.name), str(cfg.model.name)],
        )
        try:
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
        except Exception:  # an unresolvable interpolation must not stop the job
            log.debug("could not log the resolved config to wandb", exc_info=True)
        return logger
    raise ValueError(f"unknown logger {name!r}: expected wandb, csv or none")


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
