"""Zero-shot: the pretrained model as it is."""

from __future__ import annotations

from adapt.model import GLIP
from adapt.modes.base import FROZEN_TRUNK, ModePolicy
from adapt.modes.registry import register_mode


@register_mode("zero")
class ZeroShot(ModePolicy):
    """Nothing trains; everything runs in eval mode."""

    label = "zero-shot"
    trains = False
    eval_modules = (*FROZEN_TRUNK, "head")

    def trains_parameter(self, name: str, model: GLIP) -> bool:
        return False
