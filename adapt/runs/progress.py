"""One progress line per evaluation period when nobody watches a terminal.

Lightning's progress bar redraws one terminal line; written to a file (``nohup``, SLURM, ``> log``)
it is off or unreadable, so a long run said nothing between its pre-flight line and its summary.
When standard output is not a terminal, :class:`ProgressLines` logs after each evaluation period
(through the root logger: the console and the run's ``run.log``)::

    epoch 3, step 120: loss 1.2345, val ap 45.60 (best 47.00 at step 80), 0:05:12

A terminal keeps the bar alone.
"""

from __future__ import annotations

import logging
import sys
import time
from datetime import timedelta
from typing import Any

import lightning as L

log = logging.getLogger(__name__)

LOSS_KEY = "train/total"  # what GLIPAdaptation logs per step (adapt.train.module)


def stdout_is_terminal() -> bool:
    """Whether a person watches the progress bar (False under nohup, SLURM, a pipe or a file)."""
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # replaced or closed stdout
        return False


class ProgressLines(L.Callback):
    """After each evaluation period of a fit, one line: epoch, step, training loss, the validation
    metric and the best so far, time since the run started. ``protocol`` is the run's
    :class:`~adapt.train.protocol.FewShotProtocol` (its history holds the evaluations); it must come
    before this callback, so the line shows the evaluation just made."""

    def __init__(self, protocol: Any, metric: str = "ap") -> None:
        self.protocol = protocol
        self.metric = metric
        self.started = time.monotonic()
        self._said = -1  # the last step a line was logged for

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        history = self.protocol.history
        if trainer.sanity_checking or not history or not trainer.is_global_zero:
            return
        last = history[-1]
        if last["step"] == self._said:
            return
        self._said = last["step"]
        loss = trainer.callback_metrics.get(LOSS_KEY)
        loss_text = f"loss {float(loss):.4f}" if loss is not None else "loss -"
        best = self.protocol.best_ap
        elapsed = timedelta(seconds=round(time.monotonic() - self.started))
        log.info(
            "epoch %d, step %d: %s, val %s %.2f (best %.2f at step %s), %s",
            last["epoch"],
            last["step"],
            loss_text,
            self.metric,
            last[self.metric],
            best,
            self.protocol.best_step,
            elapsed,
        )
