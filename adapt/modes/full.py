"""Full fine-tuning, as the paper's recipe runs it."""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

from adapt.model import GLIP
from adapt.modes.base import ModePolicy
from adapt.modes.registry import register_mode


@register_mode("full")
class FullFineTuning(ModePolicy):
    """Everything but the frozen Swin stages and the unused class-logit head; dropout stays on."""

    label = "full-model fine-tuning"
    eval_modules = ()

    def trains_parameter(self, name: str, model: GLIP) -> bool:
        return not name.startswith("head.cls_logits.") and name not in _frozen_backbone_names(model)

    def set_module_modes(self, model: GLIP) -> None:
        super().set_module_modes(model)
        if model.training:
            # The frozen Swin stages; SwinBody.train() does this too, kept here so the policy
            # alone states every mode's module modes.
            for module in model.backbone.body.frozen_modules():
                module.eval()


def _frozen_backbone_names(model: GLIP) -> set[str]:
    """Parameter names of the Swin stages frozen by ``freeze_at`` (official FREEZE_CONV_BODY_AT)."""
    frozen: set[str] = set()
    prefix = "backbone.body."
    for module in model.backbone.body.frozen_modules():
        for name, _ in _named_under(model.backbone.body, module):
            frozen.add(prefix + name)
    return frozen


def _named_under(root: nn.Module, module: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    ids = {id(p) for p in module.parameters()}
    for name, param in root.named_parameters():
        if id(param) in ids:
            yield name, param
