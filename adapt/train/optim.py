"""Optimiser parameter groups of the paper's recipe (the plateau schedule is ``conf/recipe``'s ``lr_drop``).

The official ``make_optimizer`` gives every parameter its own group; the rules (glip_spec.md 4.7)
depend only on the name, so parameters sharing (lr, weight decay) are grouped here, which is the
same optimisation with fewer groups:

* lr = ``lr``; ``language_backbone.*`` (the BERT text encoder, not the head's BERT layers) uses
  ``lang_lr`` when it is set (a model that names its text encoder otherwise says where it starts:
  ``text_encoder_prefix``, as a detector family does);
* a name containing "bias" (this includes ``head.bias_lang``, ``head.bias0`` and Swin's
  ``relative_position_bias_table``) gets lr x ``bias_lr_factor`` and ``bias_weight_decay``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


def lr_and_decay(
    name: str, opt: Mapping[str, Any], text_prefix: str = "language_backbone."
) -> tuple[float, float]:
    """(lr, weight decay) of one parameter under the official rules."""
    lr = float(opt["lr"])
    decay = float(opt["weight_decay"])
    if name.startswith(text_prefix) and opt.get("lang_lr") is not None:
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
    text_prefix = str(getattr(model, "text_encoder_prefix", "language_backbone."))
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lr, decay = lr_and_decay(name, opt, text_prefix)
        group = groups.setdefault((lr, decay), {"params": [], "names": [], "lr": lr, "weight_decay": decay})
        group["params"].append(param)
        group["names"].append(name)
    if not groups:
        raise ValueError("no trainable parameters: the mode froze everything")
    return list(groups.values())


def adamw(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    bias_lr_factor: float = 1.0,
    bias_weight_decay: float | None = None,
    lang_lr: float | None = None,
) -> torch.optim.AdamW:
    """AdamW with torch's default betas and eps, as the official ``ADAMW`` solver.

    A mode's ``optimizer:`` node targets this function with ``_partial_: true`` and the job calls
    the partial with the model. It is a factory rather than ``_target_: torch.optim.AdamW``
    because the official recipe gives each parameter its lr and weight decay by its *name*
    (``param_groups``), which AdamW's flat keyword arguments cannot express.
    """
    opt = {
        "lr": lr,
        "weight_decay": weight_decay,
        "bias_lr_factor": bias_lr_factor,
        "bias_weight_decay": weight_decay if bias_weight_decay is None else bias_weight_decay,
        "lang_lr": lang_lr,
    }
    return torch.optim.AdamW(param_groups(model, opt), lr=float(lr))
