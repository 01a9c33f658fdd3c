"""The official few-shot evaluation protocol as a Lightning callback.

After every evaluation (one per pass over the copied training set) the official trainer
(``engine/trainer.py``, glip_spec.md 4.6-4.7):

* keeps the AP history;
* steps ``ReduceLROnPlateau`` (mode max, x0.1) with the AP, except when the AP is exactly 0;
* counts an evaluation as "worse" only when its AP is *strictly* below the best so far (best starts
  at 0); otherwise the counter resets and the weights are saved as ``model_best`` (ties replace
  the earlier best);
* stops training when the counter reaches ``AUTO_TERMINATE_PATIENCE``.

The value is the evaluation's ``ap`` (COCO AP, detection) unless ``metric`` names another key of the
result (a grounding task's ``any_box.R@1``, `adapt.train.grounding`); the history records it
under that key.

The best weights are written as the trainable tensors only (prompt offset, linear head, adapters;
everything for full fine-tuning), atomically. The callback's state goes into Lightning's resume
checkpoint, so an interrupted run continues with the same best, counter and history.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from safetensors.torch import save_file

from adapt.atomic import atomic_path
from adapt.train.module import GLIPAdaptation


class FewShotProtocol(L.Callback):
    """History, best-on-validation checkpoint and early stopping (see the module docstring)."""

    def __init__(
        self,
        best_path: str | os.PathLike[str],
        stop_patience: int,
        schedule: Callable[[torch.optim.Optimizer], Any] | None = None,
        on_evaluation: Callable[[list[dict[str, Any]]], None] | None = None,
        metric: str = "ap",
    ) -> None:
        self.best_path = Path(best_path)
        self.metric = metric
        self.stop_patience = stop_patience
        self.on_evaluation = on_evaluation
        self.history: list[dict[str, Any]] = []
        self.best_ap = 0.0
        self.best_step: int | None = None
        self.best_epoch: int | None = None
        self.worse = 0
        # The recipe's instantiated `lr_drop` (a ReduceLROnPlateau partial), built on the optimiser.
        self.schedule = schedule
        self.plateau: Any = None
        self._plateau_state: dict[str, Any] | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Built here, once the optimiser exists (and, on resume, has its state back).
        if self.schedule is not None and trainer.optimizers:
            self.plateau = self.schedule(trainer.optimizers[0])
            if self._plateau_state is not None:
                self.plateau.load_state_dict(self._plateau_state)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (
            trainer.sanity_checking
            or not isinstance(pl_module, GLIPAdaptation)
            or pl_module.last_eval is None
        ):
            return
        result = pl_module.last_eval
        pl_module.last_eval = None
        if trainer.state.fn not in ("fit", "validate"):
            return
        ap = float(metric_value(result, self.metric) or 0.0)
        step, epoch = int(pl_module.global_step), int(result.get("epoch", pl_module.current_epoch))
        if self.history and self.history[-1]["step"] == step:
            return  # already evaluated at this step (a final validate right after the last period)
        self.history.append({"step": step, "epoch": epoch, self.metric: ap, "lr": _lr(trainer)})
        if self.plateau is not None and ap != 0.0:
            self.plateau.step(ap)  # official: skipped when the AP is exactly 0
        if ap < self.best_ap:
            self.worse += 1
        else:
            self.worse = 0
            self.best_ap, self.best_step, self.best_epoch = ap, step, epoch
            if pl_module.trainable and trainer.is_global_zero:  # DDP: the ranks hold the same weights
                save_trainable(pl_module, self.best_path)
        if self.stop_patience > 0 and self.worse >= self.stop_patience:
            trainer.should_stop = True
        if self.on_evaluation is not None:
            self.on_evaluation(list(self.history))

    @property
    def evaluated_step(self) -> int | None:
        return self.history[-1]["step"] if self.history else None

    def state_dict(self) -> dict[str, Any]:
        return {
            "history": self.history,
            "best_ap": self.best_ap,
            "best_step": self.best_step,
            "best_epoch": self.best_epoch,
            "worse": self.worse,
            "plateau": self.plateau.state_dict() if self.plateau is not None else self._plateau_state,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict["history"])
        self.best_ap = float(state_dict["best_ap"])
        self.best_step = state_dict["best_step"]
        self.best_epoch = state_dict["best_epoch"]
        self.worse = int(state_dict["worse"])
        self._plateau_state = state_dict.get("plateau")


def metric_value(metrics: Mapping[str, Any], key: str) -> float | None:
    """The value of a dotted key (``ap``, ``any_box.R@1``) in an evaluation result, or None."""
    node: Any = metrics
    for part in key.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    if node is None or isinstance(node, bool | str | Mapping):
        return None
    try:
        return float(node)  # a Python or numpy number
    except (TypeError, ValueError):
        return None


def _lr(trainer: L.Trainer) -> float | None:
    if not trainer.optimizers:
        return None
    return float(trainer.optimizers[0].param_groups[0]["lr"])


def save_trainable(module: GLIPAdaptation, path: Path) -> None:
    """The module's trainable tensors as safetensors, written to a temp file then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in module.trainable_state_dict().items()}
    metadata = {"format": "adapt-trainable", "mode": module.policy.name}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)
