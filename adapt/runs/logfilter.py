"""What a run prints: one copy of every line, no third-party banners, no warnings that are by design.

Lightning adds console handlers of its own, so under Hydra's root handlers each of its lines was
printed twice; its tips and accelerator inventory, wandb's login chatter and a few warnings that
adapt triggers on purpose say nothing about the run. ``quiet=false`` shows the banners again.
"""

from __future__ import annotations

import logging
import os
import warnings

# Third-party lines that say nothing about this run: Lightning's advertising tips, its accelerator
# inventory, the litlogger/litmodels hints.
BANNERS = ("💡 Tip", "GPU available:", "TPU available:", "HPU available:", "litlogger", "litmodels")


class DropBanners(logging.Filter):
    """Drops a log record whose message contains one of :data:`BANNERS`."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(banner in message for banner in BANNERS)


def route_lightning_logs_through_root() -> None:
    """Lightning's records go through the root logger once: to the console and the run's run.log."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


def quiet_third_party() -> None:
    """Silence banners and tips (wandb's login/sync chatter, Lightning's tips) unless asked for."""
    os.environ.setdefault("WANDB_SILENT", "true")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropBanners) for f in logger.filters):
            logger.addFilter(DropBanners())


def ignore_warnings_by_design() -> None:
    """Warnings about choices adapt makes on purpose, each with its reason."""
    # Frozen parts run in eval mode on purpose (the official module modes, see adapt.modes).
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode", category=UserWarning)
    # Under DDP every rank computes the same gathered AP (module.gather_predictions), and the eval
    # sampler repeats no image (datamodule.DistributedEvalSampler): Lightning's advice is moot.
    warnings.filterwarnings("ignore", message=r".*sync_dist=True.*", category=UserWarning)
    warnings.filterwarnings(
        "ignore", message=r"Using `DistributedSampler` with the dataloaders", category=UserWarning
    )


def configure_run_logging(quiet: bool) -> None:
    """Everything above, as a job sets it up before it builds anything."""
    route_lightning_logs_through_root()
    if quiet:
        quiet_third_party()
    # Python warnings go through logging, so run.log keeps them next to the messages around them.
    logging.captureWarnings(True)
    ignore_warnings_by_design()
