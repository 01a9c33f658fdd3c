"""Adaptation modes: which parameters train and which modules run in eval mode.

The official code spreads a mode over three places (``finetune.train()``, the model constructor and
``GeneralizedVLRCNN.train()``, glip_spec.md section 3); here each mode is one :class:`ModePolicy`
that does both halves:

* :meth:`ModePolicy.apply` sets ``requires_grad`` once, before the optimiser is built (the optimiser
  then holds exactly the trainable set, like the official ``make_optimizer``);
* :meth:`ModePolicy.set_module_modes` runs after *every* ``model.train()`` (Lightning calls it at
  each epoch start) and puts the frozen parts back into eval mode, as the official ``train()``
  override does. Which parts stay in train mode matters numerically: in linear probing the frozen
  fusion and head BERT layers keep their dropout on, in prompt tuning nothing is stochastic.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from adapt.model import GLIP
from adapt.model.fusion import VLFuse

MODES = ("zero", "prompt", "linear", "full", "lora")

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


@dataclass
class ModePolicy:
    """One adaptation mode. ``eval_modules`` are put in eval mode after every ``.train()``."""

    name: str
    trains: bool
    eval_modules: Sequence[str] = ()
    lora: Mapping[str, Any] | None = None
    # Opt-in linear variant (conf/mode/linear_cached.yaml): the tower in eval mode, its output cached.
    cache_tower: bool = False
    _trainable: list[str] = field(default_factory=list, repr=False)

    # ------------------------------------------------------------------------------------------
    def apply(self, model: GLIP) -> list[str]:
        """Set ``requires_grad`` for this mode (adding the prompt offset / LoRA adapters first).

        Returns the trainable parameter names, in ``named_parameters`` order.
        """
        if self.name == "prompt":
            model.enable_prompt_tuning()
        if self.name == "lora":
            inject_lora(model, self.lora or {})
        model.requires_grad_(False)
        for name, param in model.named_parameters():
            param.requires_grad_(self._trains(name, model))
        if self.name == "linear":
            # Official linear_prob sets DYHEAD.USE_CHECKPOINT False: nothing in the tower needs
            # gradients, so recomputing it in backward would only cost time.
            for module in model.modules():
                if isinstance(module, VLFuse):
                    module.checkpoint_policy = module.use_checkpoint = False
        self._trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        self.set_module_modes(model)
        return list(self._trainable)

    def _trains(self, name: str, model: GLIP) -> bool:
        if self.name == "zero":
            return False
        if self.name == "prompt":
            return name == "prompt_offset"
        if self.name == "linear":
            return name.startswith("head.") and any(key in name for key in LINEAR_PROBE_KEYS)
        if self.name == "lora":
            return "lora_" in name
        if self.name == "full":
            return not name.startswith("head.cls_logits.") and name not in _frozen_backbone_names(model)
        raise ValueError(f"unknown mode {self.name!r}; known: {', '.join(MODES)}")

    def set_module_modes(self, model: GLIP) -> None:
        """Re-apply the official module modes (call after ``model.train()``)."""
        if not model.training:
            return  # eval() already put everything in eval mode
        for path in self.eval_modules:
            model.get_submodule(path).eval()
        if self.name == "full":
            # The frozen Swin stages; SwinBody.train() does this too, kept here so the policy
            # alone states every mode's module modes.
            for module in model.backbone.body.frozen_modules():
                module.eval()

    @property
    def trainable(self) -> list[str]:
        return list(self._trainable)


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


def inject_lora(model: GLIP, lora_cfg: Mapping[str, Any]) -> None:
    """Add peft LoRA adapters to the linear layers matched by ``target_modules`` (a regex).

    Only adapter weights train; the base layers stay frozen. Idempotent: a model that already
    carries adapters is left as it is (resume and export load into the same structure).
    """
    from peft import LoraConfig, inject_adapter_in_model

    if any("lora_" in n for n, _ in model.named_parameters()):
        return
    target = lora_cfg.get("target_modules")
    if not target:
        raise ValueError("mode=lora needs mode.lora.target_modules (a regex or a list of module names)")
    if not isinstance(target, str):
        target = list(target)
    config = LoraConfig(
        r=int(lora_cfg.get("r", 8)),
        lora_alpha=int(lora_cfg.get("alpha", 16)),
        lora_dropout=float(lora_cfg.get("dropout", 0.0)),
        target_modules=target,
        bias="none",
    )
    inject_adapter_in_model(config, model)
    if not any("lora_" in n for n, _ in model.named_parameters()):
        raise ValueError(f"mode.lora.target_modules={target!r} matched no linear layer of the model")


def lora_target_names(model: nn.Module, pattern: str) -> list[str]:
    """Module names a LoRA regex selects (peft full-matches string patterns)."""
    regex = re.compile(pattern)
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and regex.fullmatch(n)]


def build_policy(mode_cfg: Mapping[str, Any]) -> ModePolicy:
    """The policy of ``conf/mode/<name>.yaml``.

    Module modes follow the official ``GeneralizedVLRCNN.train()``: frozen backbone, FPN and
    language backbone are in eval mode; the head only when it is frozen as a whole (prompt
    tuning, RPN.FREEZE). LoRA (beyond the paper) treats the head like full fine-tuning (dropout
    on) and the frozen backbone and BERT like linear probing.
    """
    name = str(mode_cfg["name"])
    frozen_trunk = ("backbone", "language_backbone")
    if name == "zero":
        return ModePolicy(name, trains=False, eval_modules=(*frozen_trunk, "head"))
    if name == "prompt":
        return ModePolicy(name, trains=True, eval_modules=(*frozen_trunk, "head"))
    if name == "linear":
        if mode_cfg.get("cache_tower", False):
            # Not the official probe (its frozen tower keeps dropout on): a deterministic tower
            # whose output adapt.train.feature_cache keeps per training view.
            return ModePolicy(
                name, trains=True, eval_modules=(*frozen_trunk, "head.dyhead_tower"), cache_tower=True
            )
        return ModePolicy(name, trains=True, eval_modules=frozen_trunk)
    if name == "full":
        return ModePolicy(name, trains=True, eval_modules=())
    if name == "lora":
        return ModePolicy(name, trains=True, eval_modules=frozen_trunk, lora=dict(mode_cfg.get("lora") or {}))
    raise ValueError(f"unknown mode {name!r}; known: {', '.join(MODES)}")


def module_training_flags(model: GLIP) -> dict[str, bool]:
    """The module flags the oracle fixture lists (``requires_grad_modes.json``), in adapt names."""
    return {
        "backbone.body": model.backbone.body.training,
        "backbone.fpn": model.backbone.fpn.training,
        "language_backbone": model.language_backbone.training,
        "rpn.head": model.head.training,
    }
