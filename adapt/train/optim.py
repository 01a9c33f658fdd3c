"""Optimiser parameter groups and the plateau schedule of the paper's recipe.

The official ``make_optimizer`` gives every parameter its own group; the rules (glip_spec.md 4.7)
depend only on the name, so parameters sharing (lr, weight decay) are grouped here, which is the
same optimisation with fewer groups:

* lr = ``lr``; ``language_backbone.*`` (the BERT text encoder, not the head's BERT layers) uses
  ``lang_lr`` when it is set;
* a name containing "bias" (this includes ``head.bias_lang``, ``head.bias0`` and Swin's
  ``relative_position_bias_table``) gets lr x ``bias_lr_factor`` and ``bias_weight_decay``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


def lr_and_decay(name: str, opt: Mapping[str, Any]) -> tuple[float, float]:
    """(lr, weight decay) of one parameter under the official rules."""
    lr = float(opt["lr"])
    decay = float(opt["weight_decay"])
    if name.startswith("language_backbone.") and opt.get("lang_lr") is not None:
        lr = float(opt["lang_lr"])
    if "bias" in name:
        lr *= float(opt.get("bias_lr_factor", 1.0))
        decay = float(opt.get("bias_weight_decay", decay))
    return lr, decay


def param_groups(model: nn.Module, opt: Mapping[str, Any]) -> list[dict[str, Any]]:
    """AdamW groups over the parameters that require grad, one per distinct (lr, weight decay).

    Each group keeps its parameter names (``names``), so tests and logs can say what got which lr.
    """
    groups: dict[tuple[float, float], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lr, decay = lr_and_decay(name, opt)
        group = groups.setdefault((lr, decay), {"params": [], "names": [], "lr": lr, "weight_decay": decay})
        group["params"].append(param)
        group["names"].append(name)
    if not groups:
        raise ValueError("no trainable parameters: the mode froze everything")
    return list(groups.values())


def build_optimizer(model: nn.Module, opt: Mapping[str, Any]) -> torch.optim.AdamW:
    """AdamW with torch's default betas and eps, as the official ``ADAMW`` solver."""
    return torch.optim.AdamW(param_groups(model, opt), lr=float(opt["lr"]))


def build_plateau(
    optimizer: torch.optim.Optimizer, schedule: Mapping[str, Any]
) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    """Official ``WarmupReduceLROnPlateau`` without warm-up (ODinW's WARMUP_ITERS is 0)."""
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer,
        mode="max",
        factor=float(schedule.get("factor", 0.1)),
        patience=int(schedule["patience"]),
        min_lr=float(schedule.get("min_lr", 1e-6)),
        threshold=float(schedule.get("threshold", 1e-4)),
    )
