"""What a deployed detector is made of: the model with what was learned on it, and its fixed text.

Two sources: an export folder (``<run>/export``, the run's classes, weights and recorded inference
settings) and a plain class list on base weights. Either way the text side is computed here, once,
so that the graph holds it as constants:

* a ``prompt`` export carries its prompt embeddings (``Export.text_features``: the frozen BERT
  output plus the learned offset), used as they are;
* ``linear``, ``full`` and ``lora`` exports encode the run's recorded caption with the model's own
  BERT (a LoRA run's BERT adapters included), exactly as ``adapt.predict --prompt`` does;
* a class list is encoded like ``adapt.predict --classes``.

LoRA adapters are then merged into the weights they adapt (W + scale * B A, peft's own ``merge``),
so the graph holds plain linear layers. The export is read as data: its mode is checked against
the modes this module knows how to deploy *before* anything it names is loaded.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adapt.detector import Detector
from adapt.digest import file_sha256
from adapt.export import (
    ADAPT_FILE,
    CONFIG_FILE,
    TENSORS_FILE,
    Export,
    ExportError,
    checkpoint_identity,
    load_export,
)
from adapt.model.config import model_config, model_names
from adapt.model.glip import GLIP
from adapt.model.language import TextFeatures
from adapt.prompt import EncodedPrompt

# The mode policies (registered names, adapt.modes.registry) whose exports deploy.
DEPLOYABLE = ("prompt", "linear", "full", "lora")


class DeployError(ValueError):
    """Something cannot be deployed; the message is one sentence naming the file or value."""


@dataclass
class DeploySource:
    """A model ready for the graph, its constant text and what the deployed file records about it."""

    model: GLIP
    text: TextFeatures
    prompt: EncodedPrompt | None  # None for a prompt export (its text is embeddings, not tokens)
    caption: str
    class_names: list[str]
    labels: list[int]
    label_to_tokens: dict[int, list[int]]
    identity: dict[str, Any] = field(default_factory=dict)


def check_deployable(export: Export) -> None:
    """Refuse an export whose mode policy this module cannot deploy (it names a policy, never code)."""
    try:
        policy = export.policy_name
    except ExportError as exc:
        raise DeployError(str(exc)) from None
    if policy not in DEPLOYABLE:
        what = f"mode {export.mode!r}" + (f" (policy {policy})" if policy != export.mode else "")
        raise DeployError(
            f"{export.metadata_file}: {what} cannot be exported to ONNX yet; "
            f"deployable mode policies: {', '.join(DEPLOYABLE)}"
        )


def export_identity(export: Export) -> dict[str, Any]:
    """The export as the deployed file records it: mode, task, base model and every file's SHA-256."""
    files = [CONFIG_FILE, TENSORS_FILE] + ([ADAPT_FILE] if export.peft_config is not None else [])
    return {
        "kind": "export",
        "mode": export.mode,
        "task": export.config.get("task"),
        "export_format_version": export.version,
        "base_model": export.config.get("base_model"),
        "files": {name: file_sha256(export.folder / name) for name in files},
    }


def from_export(
    path: str | os.PathLike[str], model: str | None = None, checkpoint: str | os.PathLike[str] | None = None
) -> DeploySource:
    """The run's detector (``Detector.from_export``: recorded weights checked by SHA-256, recorded
    sizes and settings, the run's caption) with its text computed once and LoRA merged."""
    export = load_export(path)
    check_deployable(export)
    weights = Path(checkpoint) if checkpoint is not None else None
    detector = Detector.from_export(Path(path), model=model, checkpoint=weights)
    glip = detector.model.eval()
    exported = detector.export_text
    assert exported is not None
    if exported.features is not None:  # a prompt export: its embeddings, no text encoder
        text = exported.batch(1)
        prompt = None
    else:
        prompt = exported.prompt
        text = _encode(glip, prompt)
    merge_lora(glip)
    return DeploySource(
        model=glip,
        text=text,
        prompt=prompt,
        caption=str(export.config.get("caption", "")),
        class_names=export.class_names,
        labels=[int(v) for v in export.config.get("labels") or range(1, len(export.class_names) + 1)],
        label_to_tokens=export.label_to_tokens,
        identity=export_identity(export),
    )


def from_classes(
    classes: Sequence[str], model: str = "glip_t", checkpoint: str | os.PathLike[str] | None = None
) -> DeploySource:
    """A plain class list on base weights, as ``adapt.predict --classes`` detects it."""
    if model not in model_names():
        raise DeployError(f"unknown model config {model!r}; known: {', '.join(model_names())}")
    official = model_config(model)
    if checkpoint is None and (official.get("checkpoint") or {}).get("file"):
        from adapt.download import require_checkpoint

        checkpoint = require_checkpoint(official)  # the official weights, verified, from the cache
    detector = Detector.from_config(model, checkpoint=Path(checkpoint) if checkpoint is not None else None)
    # A model without released weights (glip_mini) gets build_glip's seeded random init.
    weights = checkpoint_identity(checkpoint)
    return from_detector(
        detector, classes, identity={"kind": "classes", "model": model, "checkpoint": weights}
    )


def from_detector(
    detector: Detector, classes: Sequence[str], identity: dict[str, Any] | None = None
) -> DeploySource:
    """Any ``Detector`` (e.g. an architecture with seeded random weights) and a class list."""
    chunks = detector.encode(classes=list(classes))
    if len(chunks) != 1:
        raise DeployError(
            f"the {len(classes)} classes need {len(chunks)} captions of "
            f"{detector.model.cfg.language.max_query_len} tokens; a deployed detector holds one caption, "
            "so deploy the classes in groups that fit one"
        )
    prompt = chunks[0]
    glip = detector.model.eval()
    return DeploySource(
        model=glip,
        text=_encode(glip, prompt),
        prompt=prompt,
        caption=prompt.caption,
        class_names=list(prompt.class_names),
        labels=list(prompt.labels),
        label_to_tokens={int(k): list(v) for k, v in prompt.label_to_tokens.items()},
        identity=dict(identity or {"kind": "classes"}),
    )


@torch.no_grad()
def _encode(model: GLIP, prompt: EncodedPrompt) -> TextFeatures:
    """BERT once on the caption, plus the model's prompt offset where it has one (GLIP.forward's text)."""
    if model.language_backbone is None:
        raise DeployError("the model has no text encoder to encode the caption with")
    text = model.encode_text(prompt.input_ids[None], prompt.attention_mask[None])
    if model.prompt_offset is not None:
        text = text.with_offset(model.prompt_offset)
    return text


@torch.no_grad()
def merge_lora(model: nn.Module) -> int:
    """Fold every peft LoRA adapter into its base layer and put the plain layer back; returns how many.

    peft's ``merge`` adds scale * B A to the base weight; the layer that replaces the adapter is the
    base ``nn.Linear`` itself, so the fusion takes its folded fast path, as for any plain model.
    """
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # peft is a dependency of adapt; without it there are no adapters either
        return 0
    merged = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge(safe_merge=True)
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, module.get_base_layer())
            merged += 1
    leftover = [n for n, _ in model.named_parameters() if "lora_" in n]
    if leftover:
        raise DeployError(f"LoRA parameters left after merging: {leftover[:3]}")
    if merged and hasattr(model, "peft_config"):
        del model.peft_config
    return merged
