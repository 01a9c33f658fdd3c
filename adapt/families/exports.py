"""What a family's training run exports, and how an export goes back onto a family detector.

The tensors only; the folder layout, metadata and atomic writing are adapt's export format's
(``adapt.export``), which records for a family what it records for GLIP plus the detector's
``identity`` (family, weights source, weights digest):

* ``prompt``: ``prompt.hidden`` (the text features the detector consumed: the text encoder's output
  for the task prompt plus the learned offset), ``prompt.input_ids``, ``prompt.attention_mask``
  and the raw ``prompt_offset``. Applying it drops the text encoder: detection reads the stored
  features (paper 5.2's "discard the language backbone", as for GLIP).
* ``linear``, ``full``: the trained tensors under transformers' names (``hf.`` stripped), so they
  also load onto the plain transformers model with ``load_state_dict(strict=False)``.
* ``lora``: peft's own format, ``LoraConfig.to_dict()`` and ``get_peft_model_state_dict`` under
  ``base_model.model.`` (what ``PeftModel.save_pretrained`` writes), for the transformers model:
  ``PeftModel.from_pretrained(model, export)`` (for Grounding DINO after
  ``model.config.tie_word_embeddings = False``: peft's tied-embedding check otherwise stops on a
  config that declares tied weights but has no input embeddings; the ties are made at load time).

An export applies only to the weights it was trained on (:func:`check_base_weights`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from adapt.families.base import DetectorFamily
from adapt.families.modes import HF, OFFSET, check_mode, inject_lora
from adapt.prompt import EncodedPrompt

PEFT_PREFIX = "base_model.model."


class FamilyExportError(ValueError):
    """An export does not belong to this detector (other weights, other tensors)."""


@torch.no_grad()
def prompt_tensors(family: DetectorFamily, prompt: EncodedPrompt) -> dict[str, Tensor]:
    """The learned prompt: the text encoder's output for ``prompt`` (eval mode) plus the offset."""
    if family.prompt_offset is None:
        raise FamilyExportError("no prompt offset to export: the detector was not prompt-tuned")
    encoder = family.hf.get_submodule(family.text_encoder)
    was_training = encoder.training
    encoder.eval()
    try:
        raw = family.encode_text(prompt)
    finally:
        encoder.train(was_training)
    return {
        "prompt.hidden": family.prompt_offset(raw).detach().cpu().contiguous(),
        "prompt.input_ids": prompt.input_ids.cpu(),
        "prompt.attention_mask": prompt.attention_mask.cpu(),
        "prompt_offset": family.prompt_offset.offset.detach().cpu().contiguous(),
    }


def export_tensors(
    family: DetectorFamily, mode: str, trainable: list[str], prompt: EncodedPrompt
) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """The tensors a run in ``mode`` exports, and peft's adapter config for ``lora``.

    ``trainable``: the run's trainable names (``modes.apply_mode``'s result)."""
    check_mode(mode)
    if mode == "zero":
        return {}, None
    if mode == "prompt":
        return prompt_tensors(family, prompt), None
    if mode == "lora":
        from peft import get_peft_model_state_dict

        config = family.lora_config.to_dict()
        config["target_modules"] = (
            sorted(config["target_modules"])
            if isinstance(config["target_modules"], set)
            else config["target_modules"]
        )
        state = get_peft_model_state_dict(family)
        return {
            PEFT_PREFIX + k.removeprefix(HF): v.detach().cpu().contiguous() for k, v in state.items()
        }, config
    params = dict(family.named_parameters())
    return {name.removeprefix(HF): params[name].detach().cpu().contiguous() for name in trainable}, None


@torch.no_grad()
def apply_export(
    family: DetectorFamily,
    mode: str,
    tensors: Mapping[str, Tensor],
    peft_config: Mapping[str, Any] | None = None,
) -> Tensor | None:
    """Put an export's tensors onto ``family`` (built on the export's base weights).

    Returns a prompt export's stored text features (pass them as ``text=``; the text encoder is
    dropped), else None."""
    check_mode(mode)
    if mode == "prompt":
        family.drop_text_encoder()
        return tensors["prompt.hidden"].to(family.device)
    if mode == "lora":
        from peft import LoraConfig, set_peft_model_state_dict

        if peft_config is None:
            raise FamilyExportError("a LoRA export needs its peft adapter config")
        settings = {k: v for k, v in peft_config.items() if k in LORA_KEYS}
        config = LoraConfig(**settings)
        inject_lora(
            family,
            {
                "r": config.r,
                "alpha": config.lora_alpha,
                "dropout": config.lora_dropout,
                "target_modules": config.target_modules,
            },
        )
        state = {HF + k.removeprefix(PEFT_PREFIX): v for k, v in tensors.items()}
        result = set_peft_model_state_dict(family, state)
        unexpected = list(getattr(result, "unexpected_keys", []) or [])
        if unexpected:
            raise FamilyExportError(f"the LoRA export holds tensors this detector lacks: {unexpected[:3]}")
        return None
    params = {name.removeprefix(HF): p for name, p in family.named_parameters() if name != OFFSET}
    for name, value in tensors.items():
        if name not in params:
            raise FamilyExportError(
                f"the export's tensor {name!r} is not a parameter of this {family.name} detector"
            )
        if tuple(params[name].shape) != tuple(value.shape):
            raise FamilyExportError(
                f"the export's tensor {name!r} is {tuple(value.shape)}, "
                f"the detector's {tuple(params[name].shape)}"
            )
        params[name].copy_(value.to(params[name].device, params[name].dtype))
    return None


# LoraConfig fields an adapt family export uses (the rest of peft's dict stays peft's).
LORA_KEYS = ("r", "lora_alpha", "lora_dropout", "target_modules", "bias")


def check_base_weights(recorded: Mapping[str, Any], family: DetectorFamily) -> None:
    """Refuse an export trained on other weights: its recorded ``weights_sha256`` must be the
    detector's (``family.identity``), and so must its family."""
    if recorded.get("family") != family.name:
        raise FamilyExportError(
            f"the export belongs to a {recorded.get('family')!r} detector, not a {family.name!r} one"
        )
    expected, actual = recorded.get("weights_sha256"), family.identity.get("weights_sha256")
    if expected != actual:
        raise FamilyExportError(
            f"the export was trained on weights with SHA-256 {expected} but these weights are {actual} "
            f"(source: {family.identity.get('path') or family.identity.get('repo') or 'random init'})"
        )
