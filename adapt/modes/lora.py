"""LoRA through peft: adapters injected by module-name pattern, saved in peft's own format."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from torch import Tensor, nn

from adapt.export import PEFT_ADAPTER, PEFT_PREFIX, Export, ExportError
from adapt.model import GLIP
from adapt.modes.base import FROZEN_TRUNK, ModePolicy, load_named_tensors
from adapt.modes.registry import register_mode
from adapt.prompt import EncodedPrompt


@register_mode("lora")
class LoRA(ModePolicy):
    """peft LoRA adapters (``mode.policy.config``, a ``peft.LoraConfig`` node); only the adapters
    train. Beyond the paper, the head is treated like full fine-tuning (dropout on), backbone and
    BERT like linear probing."""

    label = "LoRA"
    eval_modules = FROZEN_TRUNK

    def __init__(self, config: LoraConfig | None = None) -> None:
        super().__init__()
        self.config = config

    def prepare(self, model: GLIP) -> None:
        if self.config is None:
            raise ValueError(
                "mode=lora needs mode.policy.config (a peft.LoraConfig node with target_modules)"
            )
        inject_lora(model, self.config)

    def trains_parameter(self, name: str, model: GLIP) -> bool:
        return "lora_" in name

    def export_tensors(
        self, model: GLIP, trainable: Mapping[str, Tensor], prompt: EncodedPrompt
    ) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
        """peft's own format: ``LoraConfig.to_dict()`` and ``get_peft_model_state_dict()``."""
        peft_config = getattr(model, "peft_config", {}).get(PEFT_ADAPTER)
        if peft_config is None:
            raise ExportError("a lora export needs the model's peft adapters (adapt.modes.lora.inject_lora)")
        config = peft_config.to_dict()
        # JSON has no sets; sorted lists keep the bytes stable. Saved adapters are for inference.
        config = {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}
        config["inference_mode"] = True
        config["peft_type"] = str(getattr(config["peft_type"], "value", config["peft_type"]))
        state = get_peft_model_state_dict(model, state_dict=dict(trainable), adapter_name=PEFT_ADAPTER)
        return {PEFT_PREFIX + k: v for k, v in state.items()}, config

    def apply_export(self, export: Export, model: GLIP) -> GLIP:
        if export.peft_config is None:
            # Format 1: adapt names and adapt's own LoRA settings in its metadata.
            inject_lora(model, legacy_lora_config(export.config.get("lora") or {}, export))
            return load_named_tensors(export, model, dict(export.tensors))
        where = export.folder / "adapter_config.json"
        if export.peft_config.get("peft_type") != "LORA":
            raise ExportError(f"{where}: peft_type {export.peft_config.get('peft_type')!r} is not LORA")
        try:  # peft's own reading of its adapter_config.json (as LoraConfig.from_pretrained does)
            config = LoraConfig.from_peft_type(**LoraConfig.check_kwargs(**export.peft_config))
        except (TypeError, ValueError) as exc:
            raise ExportError(f"{where}: not a peft LoraConfig ({exc})") from exc
        inject_adapter_in_model(config, model, adapter_name=PEFT_ADAPTER)
        try:
            result: Any = set_peft_model_state_dict(model, export.tensors, adapter_name=PEFT_ADAPTER)
        except RuntimeError as exc:  # load_state_dict's size mismatches
            first = str(exc).strip().splitlines()[-1].strip()
            raise ExportError(f"{export.tensors_file}: does not fit the model: {first}") from exc
        missing = [k for k in result.missing_keys if "lora_" in k]
        if result.unexpected_keys or missing:
            raise ExportError(
                f"{export.tensors_file}: adapter tensors do not match the model "
                f"(unexpected {list(result.unexpected_keys)[:3]}, missing {missing[:3]})"
            )
        return model


def inject_lora(model: GLIP, config: LoraConfig) -> None:
    """Add peft LoRA adapters to the linear layers ``config.target_modules`` matches.

    Only adapter weights train; the base layers stay frozen. Idempotent: a model that already
    carries adapters is left as it is (resume and export load into the same structure).
    """
    if any("lora_" in n for n, _ in model.named_parameters()):
        return
    if not config.target_modules:
        raise ValueError(
            "mode=lora needs mode.policy.config.target_modules (a regex or a list of module names)"
        )
    inject_adapter_in_model(config, model, adapter_name=PEFT_ADAPTER)
    if not any("lora_" in n for n, _ in model.named_parameters()):
        raise ValueError(
            f"mode.policy.config.target_modules={config.target_modules!r} matched no linear layer "
            "of the model"
        )


def legacy_lora_config(settings: Mapping[str, Any], export: Export) -> LoraConfig:
    """The LoraConfig a format-1 export's ``lora`` block (adapt's old names) described."""
    target = settings.get("target_modules")
    if not target:
        raise ExportError(f"{export.metadata_file}: a format-1 lora export without lora.target_modules")
    return LoraConfig(
        r=int(settings.get("r", 8)),
        lora_alpha=int(settings.get("alpha", 16)),
        lora_dropout=float(settings.get("dropout", 0.0)),
        target_modules=target if isinstance(target, str) else list(target),
        bias="none",
    )


def lora_target_names(model: nn.Module, pattern: str) -> list[str]:
    """Module names a LoRA regex selects (peft full-matches string patterns)."""
    regex = re.compile(pattern)
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and regex.fullmatch(n)]
