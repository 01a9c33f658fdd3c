"""The Python API of a detector family (``adapt.families``): build, load an export, detect.

    from adapt.family_detector import FamilyDetector
    det = FamilyDetector.from_config("grounding_dino_t")                # HF cache / hub
    det = FamilyDetector.from_config("grounding_dino_t", checkpoint=DIR)  # a save_pretrained folder
    det = FamilyDetector.from_folder(DIR)                               # the folder alone
    det = FamilyDetector.from_export("outputs/.../export")              # a training run's export
    results = det.predict(["a.jpg", pil_image], classes=["fish", "jellyfish"])

What ``adapt.detector.Detector`` is for GLIP: detections come back per image as
:class:`~adapt.detector.Detections`, boxes in the original image's pixels in transformers'
convention (``FamilyDetector.boxes``: width ``x2 - x1``), from the family's own processor and
``post_process_grounded_object_detection``'s decoding (the model config's ``inference:``), so they are
transformers' pipeline's. Images are batched only with images of the same processed size, so an
image's detections do not depend on its batch.

An export is data (docs/DESIGN.md, "Received files are data"): its base model must be a shipped
family model config, named by name; its weights are rebuilt from that config (random init: the
recorded seed and processor settings; a hub model: the HF cache; a folder: ``checkpoint``, which
the caller passes) and must have the SHA-256 the export records; its mode is a registered name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import Tensor

from adapt.boxes import TRANSFORMERS_BOXES, BoxConvention
from adapt.data.io import read_image
from adapt.detector import Detections, ImageInput
from adapt.export import Export, ExportError, load_export
from adapt.families import (
    DetectorFamily,
    FamilySpec,
    InferenceSettings,
    build_family,
    family_from_folder,
    family_model_config,
    is_family_model,
)
from adapt.families.spec import FamilyConfigError
from adapt.modes import UnknownModeError, policy_for_export
from adapt.modes.family import FamilyPolicy
from adapt.prompt import EncodedPrompt


class FamilyDetector:
    """A detector family plus what turns images and class names into boxes (see the module docstring)."""

    boxes: ClassVar[BoxConvention] = TRANSFORMERS_BOXES

    def __init__(
        self, family: DetectorFamily, device: str | torch.device = "cpu", batch_size: int = 4
    ) -> None:
        self.device = torch.device(device)
        self.family = family.to(self.device).eval()
        self.batch_size = batch_size
        # What predict() detects without classes: an export's prompt and, for a prompt export, its
        # stored text features (the text encoder is then dropped).
        self.export_prompt: EncodedPrompt | None = None
        self.export_text: Tensor | None = None

    @property
    def settings(self) -> InferenceSettings:
        """The decoding of ``predict`` (the model config's ``inference:``, an export's recorded one)."""
        return self.family.settings

    def set_threshold(self, threshold: float) -> None:
        self.family.settings = replace(self.family.settings, threshold=float(threshold))

    @property
    def default_classes(self) -> list[str]:
        """What ``predict()`` detects when given no classes: the loaded export's classes, else none."""
        return list(self.export_prompt.class_names) if self.export_prompt is not None else []

    # -- building -----------------------------------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        model: str | FamilySpec,
        checkpoint: str | Path | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 4,
    ) -> FamilyDetector:
        """A shipped family model config (or a spec); ``checkpoint``: a ``save_pretrained`` folder
        replacing its weights (``--checkpoint DIR``; the folder's config.json defines the model)."""
        spec = family_model_config(model) if isinstance(model, str) else model
        if checkpoint is not None:
            spec = spec.with_folder(str(checkpoint))
        return cls(build_family(spec), device, batch_size)

    @classmethod
    def from_folder(
        cls, path: str | Path, device: str | torch.device = "cpu", batch_size: int = 4
    ) -> FamilyDetector:
        """Any ``save_pretrained`` folder of a family's model: its ``model_type`` picks the family."""
        return cls(family_from_folder(path), device, batch_size)

    @classmethod
    def from_export(
        cls,
        path: str | Path,
        checkpoint: str | Path | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 4,
    ) -> FamilyDetector:
        """The detector a family's training run exported (``<run>/export``): its base model, checked
        by the weights' SHA-256, with the export applied; ``predict()`` without classes then
        reproduces the run's test detections (its prompt, its test decoding).

        ``checkpoint``: the ``save_pretrained`` folder of the base weights, for a run that read its
        weights from a folder (the export records the folder's path as text only)."""
        export = load_export(path)
        try:
            policy = policy_for_export(export.policy_name)
        except UnknownModeError as exc:
            raise ExportError(f"{export.metadata_file}: {exc}") from None
        spec, settings = export_spec(export, checkpoint)
        family = build_family(spec)
        prompt = export.encoded_prompt()
        text = FamilyPolicy(policy, prompt).load_export(export, family)
        family.settings = settings
        detector = cls(family, device, batch_size)
        detector.export_prompt = prompt
        detector.export_text = text.to(detector.device) if text is not None else None
        return detector

    @classmethod
    def load(
        cls,
        model: str | None = None,
        checkpoint: str | Path | None = None,
        export: str | Path | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 4,
    ) -> FamilyDetector:
        """What ``adapt.predict``'s ``--model``, ``--checkpoint DIR`` and ``--prompt`` name: an export,
        a model config (its weights replaced by the folder), or the folder alone."""
        if export is not None:
            return cls.from_export(export, checkpoint, device, batch_size)
        if model is not None:
            return cls.from_config(model, checkpoint, device, batch_size)
        if checkpoint is None:
            raise ValueError("name a family model config (--model), a save_pretrained folder or an export")
        return cls.from_folder(checkpoint, device, batch_size)

    # -- detecting ----------------------------------------------------------------------------------

    @torch.no_grad()
    def predict(
        self,
        images: ImageInput | Sequence[ImageInput],
        classes: Sequence[str] | None = None,
        batch_size: int | None = None,
    ) -> list[Detections]:
        """Detect ``classes`` (chunked to the text limit), or a loaded export's, in every image."""
        items: list[ImageInput] = [images] if isinstance(images, str | Path | Image.Image) else list(images)
        pil = [read_image(im) if isinstance(im, str | Path) else im.convert("RGB") for im in items]
        text = None
        if classes is None:
            if self.export_prompt is None:
                raise ValueError("give `classes` (or load an export with FamilyDetector.from_export)")
            prompts, text = [self.export_prompt], self.export_text
        else:
            if not classes:
                raise ValueError("`classes` is empty")
            if self.family.text_encoder_dropped:
                raise ValueError("a prompt export replaced the text encoder: call predict without classes")
            prompts = self.family.encode_prompts(list(classes))
        names = {label: name for p in prompts for label, name in zip(p.labels, p.class_names, strict=True)}
        found = self.family.detect(pil, prompts=prompts, text=text, batch_size=batch_size or self.batch_size)
        return [
            Detections(d["boxes"], d["scores"], d["labels"], [names[int(x)] for x in d["labels"]], _hw(im))
            for d, im in zip(found, pil, strict=True)
        ]


def _hw(image: Image.Image) -> tuple[int, int]:
    return image.height, image.width


def family_requested(model: str | None, checkpoint: str | Path | None, export: str | Path | None) -> bool:
    """Whether ``adapt.predict``'s arguments name a detector family: a family's export, a family
    model config, or a ``save_pretrained`` folder as the checkpoint (GLIP's checkpoints are files)."""
    if export is not None:
        return is_family_export(export)
    if model is not None and is_family_model(model):
        return True
    return checkpoint is not None and Path(checkpoint).is_dir()


def is_family_export(path: str | Path) -> bool:
    """Whether ``path`` is a detector family's export (its base model records a family)."""
    try:
        export = load_export(path)
    except ExportError:
        return False  # not an export at all: GLIP's loader says why
    return bool((export.config.get("base_model") or {}).get("family"))


def export_spec(export: Export, checkpoint: str | Path | None) -> tuple[FamilySpec, InferenceSettings]:
    """The model config that rebuilds an export's base detector, and the run's test decoding.

    The base model is a shipped family config named by the export; a random-init model takes the
    recorded seed and processor settings, and must have the shipped architecture (anything else is
    refused, not rebuilt from the file); weights read from a folder need that folder as
    ``checkpoint``."""
    where = export.metadata_file
    base = export.config.get("base_model") or {}
    name, family = str(base.get("name")), base.get("family")
    if not family:
        raise ExportError(
            f"{where}: a GLIP export, not a detector family's (load it with adapt.detector.Detector)"
        )
    if not is_family_model(name):
        raise ExportError(f"{where}: base model {name!r} is not a detector family's model config adapt ships")
    spec = family_model_config(name)
    if spec.family != family:
        raise ExportError(f"{where}: records family {family!r}, but model config {name!r} is {spec.family!r}")
    record: Mapping[str, Any] = export.config.get("family") or {}
    weights: Mapping[str, Any] = base.get("weights") or {}
    if checkpoint is not None:
        spec = spec.with_folder(str(checkpoint))
    elif weights.get("path"):
        raise ExportError(
            f"{where}: trained on weights read from a save_pretrained folder ({weights.get('path')}, "
            f"SHA-256 {weights.get('weights_sha256')}); pass that folder as --checkpoint"
        )
    elif not spec.pretrained:
        spec = _random_init_spec(spec, record, where)
    try:
        settings = InferenceSettings(**dict(record.get("inference") or {}))
    except (TypeError, FamilyConfigError) as exc:
        raise ExportError(f"{where}: family.inference: {exc}") from None
    return spec, settings


def _random_init_spec(spec: FamilySpec, record: Mapping[str, Any], where: Path) -> FamilySpec:
    """A random-init base model: the shipped architecture, the recorded seed and processor settings."""
    config = record.get("config")
    if config is not None and config != spec.config:
        keys = sorted(k for k in set(config) | set(spec.config) if config.get(k) != spec.config.get(k))
        raise ExportError(
            f"{where}: trained on {spec.name} with another architecture (config keys {keys} differ from "
            f"conf/model/{spec.name}.yaml); only the shipped architecture is rebuilt from an export"
        )
    seed, processor = record.get("seed", spec.seed), record.get("processor", spec.processor)
    if not isinstance(seed, int) or isinstance(seed, bool) or not isinstance(processor, Mapping):
        raise ExportError(f"{where}: family.seed must be an integer and family.processor a mapping")
    return replace(spec, seed=seed, processor=dict(processor))
