"""The official linear probe (``linear_prob``): box regression, centerness, text projection, biases."""

from __future__ import annotations

from adapt.model import GLIP
from adapt.model.fusion import VLFuse
from adapt.modes.base import FROZEN_TRUNK, ModePolicy
from adapt.modes.registry import register_mode

# Official linear_prob whitelist (``finetune.train()``): rpn params whose name contains one of these.
# ``cls_logits`` is whitelisted officially too but frozen in the constructor, so it never trains.
LINEAR_PROBE_KEYS = (
    "bbox_pred",
    "centerness",
    "dot_product_projection_text",
    "log_scale",
    "bias_lang",
    "bias0",
)


@register_mode("linear")
class LinearProbe(ModePolicy):
    """The head's prediction layers train; backbone and BERT are frozen in eval mode, the frozen
    tower keeps its dropout on (official). ``cache_tower=True`` (``mode=linear_cached``, not the
    official probe) runs the tower in eval mode so its output can be cached per training view."""

    label = "linear probing"
    eval_modules: tuple[str, ...] = FROZEN_TRUNK

    def __init__(self, cache_tower: bool = False) -> None:
        super().__init__()
        if cache_tower:
            self.cache_tower = True
            self.eval_modules = (*FROZEN_TRUNK, "head.dyhead_tower")

    @property
    def title(self) -> str:
        return "linear probing (cached tower)" if self.cache_tower else self.label

    def prepare(self, model: GLIP) -> None:
        # Official linear_prob sets DYHEAD.USE_CHECKPOINT False: nothing in the tower needs
        # gradients, so recomputing it in backward would only cost time.
        for module in model.modules():
            if isinstance(module, VLFuse):
                module.checkpoint_policy = module.use_checkpoint = False

    def trains_parameter(self, name: str, model: GLIP) -> bool:
        return name.startswith("head.") and any(key in name for key in LINEAR_PROBE_KEYS)
