"""GLIP prompt tuning (official ``language_prompt_v2``): a per-token offset on the frozen BERT output."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from adapt.export import Export, ExportError
from adapt.model import GLIP, TextFeatures
from adapt.modes.base import FROZEN_TRUNK, InferenceText, ModePolicy, load_named_tensors
from adapt.modes.registry import register_mode
from adapt.prompt import EncodedPrompt


@register_mode("prompt")
class PromptTuning(ModePolicy):
    """Only the zero-initialised ``prompt_offset`` trains; all else is frozen and in eval mode."""

    label = "prompt tuning"
    eval_modules = (*FROZEN_TRUNK, "head")

    def prepare(self, model: GLIP) -> None:
        model.enable_prompt_tuning()

    def trains_parameter(self, name: str, model: GLIP) -> bool:
        return name == "prompt_offset"

    @torch.no_grad()
    def export_tensors(
        self, model: GLIP, trainable: Mapping[str, Tensor], prompt: EncodedPrompt
    ) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
        """The learned prompt embeddings (frozen BERT output plus the offset) and the raw offset,
        so detection needs no text encoder (paper 5.2)."""
        bert = model.language_backbone
        was_training = bert.training
        bert.eval()
        device = next(model.parameters()).device
        text = model.encode_text(prompt.input_ids[None].to(device), prompt.attention_mask[None].to(device))
        bert.train(was_training)
        offset = trainable["prompt_offset"]
        text = text.with_offset(offset.to(text.hidden.device))
        assert text.embedded is not None
        tensors = {
            "prompt.hidden": text.hidden,
            "prompt.embedded": text.embedded,
            "prompt.attention_mask": prompt.attention_mask[None],
            "prompt.input_ids": prompt.input_ids[None],
            "prompt_offset": offset,
        }
        return tensors, None

    def apply_export(self, export: Export, model: GLIP) -> GLIP:
        self.prepare(model)
        return load_named_tensors(export, model, {"prompt_offset": export.tensors["prompt_offset"]})

    def inference_text(self, export: Export) -> InferenceText:
        """The stored embeddings: the offset is already inside, and the text encoder is not needed."""
        return InferenceText(export.encoded_prompt(), stored_text_features(export))

    def load_export(self, export: Export, model: GLIP) -> InferenceText:
        """The stored embeddings replace BERT and its offset: the model itself is left as it is."""
        export.check_model(model)
        return self.inference_text(export)


def stored_text_features(export: Export) -> TextFeatures:
    """The prompt embeddings an export stores (``prompt.hidden``, ``prompt.embedded``), batch 1."""
    missing = [
        k for k in ("prompt.hidden", "prompt.embedded", "prompt.attention_mask") if k not in export.tensors
    ]
    if missing:
        raise ExportError(f"{export.tensors_file}: a {export.mode} export without {missing}")
    return TextFeatures(
        hidden=export.tensors["prompt.hidden"],
        mask=export.tensors["prompt.attention_mask"],
        embedded=export.tensors["prompt.embedded"],
    )
