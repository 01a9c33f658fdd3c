"""The model-family seam: what adapt needs from an open-vocabulary detector family.

adapt's modes, protocol and exports were written for GLIP; a *family* is anything else they can
drive. The seam is what both sides need and no more:

* **build** from a model config (``adapt.families.loading.build_family``): random init, a hub
  repository or a local ``save_pretrained`` folder;
* **encode a prompt** in the family's own format (:meth:`DetectorFamily.encode_prompt`, chunks
  through :meth:`encode_prompts`), into the same :class:`~adapt.prompt.EncodedPrompt` GLIP uses;
* **text features** (:meth:`encode_text`): the text encoder's output for one prompt, computed once
  and reusable, plus the learned prompt offset when prompt tuning is on;
* **run** images (:meth:`preprocess`, the family's own processor) and text features to transformers'
  own losses, or to detections (:meth:`forward`, :meth:`detect`);
* **name the parameter groups** the modes select (class attributes below; applied by
  ``adapt.families.modes``) and the text encoder an export may drop (:meth:`drop_text_encoder`).

A family is an ``nn.Module`` whose child ``hf`` is the transformers model, unchanged: parameter
names under ``hf.`` are transformers' own, so a trained tensor or a peft adapter loads onto the plain
transformers model. Families are thin adapters: every number comes from transformers' modules,
processors, matcher and loss terms; what adapt adds is the text-feature seam, batching whose items
cannot affect each other, and class lists longer than the text limit.

Coordinates: images go in as PIL images or [3, H, W] tensors; targets and detections are xyxy boxes
in those images' own pixels, with 1-based global labels. Boxes are transformers' (width = x2 - x1);
GLIP's legacy "+1" width does not apply.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import Tensor, nn
from transformers import PreTrainedModel, ProcessorMixin
from transformers.image_transforms import corners_to_center_format

from adapt.families.captions import chunk_classes
from adapt.families.decoding import decode, merge
from adapt.families.spec import EVALUATION, InferenceSettings
from adapt.families.text_features import PromptOffset
from adapt.prompt import EncodedPrompt

ImageLike = Image.Image | Tensor


@dataclass
class ImageBatch:
    """Images as the family's processor prepared them, and where each came from.

    ``pixel_mask`` [B, H, W] (1 = image) where the family pads (Grounding DINO), else None.
    ``sizes`` are the (H, W) of the images as given: the pixels of targets and detections.
    ``index`` are the images' positions in the caller's list.
    """

    pixel_values: Tensor
    pixel_mask: Tensor | None
    sizes: list[tuple[int, int]]
    index: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.pixel_values.shape[0])

    def to(self, device: torch.device) -> ImageBatch:
        mask = self.pixel_mask.to(device) if self.pixel_mask is not None else None
        return ImageBatch(self.pixel_values.to(device), mask, self.sizes, self.index)


@dataclass
class RawOutputs:
    """What a family's forward gives before decoding: ``logits`` [B, N, T] per query and text
    position, ``boxes`` [B, N, 4] normalised (cx, cy, w, h); with targets, transformers' loss."""

    logits: Tensor
    boxes: Tensor
    loss: Tensor | None = None
    losses: dict[str, Tensor] | None = None


class DetectorFamily(nn.Module, ABC):
    """A transformers detector (``hf``) with its processor, behind adapt's modes and protocol.

    Subclasses set the class attributes and implement the abstract methods; module paths are
    relative to ``hf``.
    """

    name: ClassVar[str]  # registry name: a model config's `family`
    model_types: ClassVar[tuple[str, ...]]  # config.json `model_type` values this family runs
    model_class: ClassVar[type[PreTrainedModel]]
    config_class: ClassVar[type]
    processor_class: ClassVar[type[ProcessorMixin]]
    # Modules of the frozen trunk (eval mode in lora); the text encoder is the one an export drops.
    vision_modules: ClassVar[tuple[str, ...]]
    text_encoder: ClassVar[str]
    # What `linear` trains (modules or parameters; the subclass docstring says why), what `full`
    # leaves frozen, and where `lora` puts adapters (a regex full-matched against module names,
    # peft's rule).
    linear_modules: ClassVar[tuple[str, ...]]
    frozen_in_full: ClassVar[tuple[str, ...]] = ()
    lora_targets: ClassVar[str]
    default_threshold: ClassVar[float]

    def __init__(self, hf: PreTrainedModel, processor: ProcessorMixin, settings: InferenceSettings) -> None:
        super().__init__()
        self.hf = hf
        self.processor = processor
        self.settings = settings  # predict's decoding (the model config's `inference:`)
        self.evaluation = EVALUATION  # the protocol's decoding for AP (`evaluation:`)
        self.prompt_offset: PromptOffset | None = None
        self.text_encoder_dropped = False
        self.lora_config: Any = None  # peft's LoraConfig once adapters are injected (modes.inject_lora)
        # Set by the builder: where the weights came from and their digest (exports check it).
        self.identity: dict[str, Any] = {}

    @classmethod
    @abstractmethod
    def build_processor(cls, tokenizer: Any, image_processor_kwargs: dict[str, Any]) -> ProcessorMixin:
        """The processor of a random-init model: the family's image processor with these settings
        and a tokenizer adapt ships (pretrained models load their own processor)."""

    # -- prompts ------------------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    @abstractmethod
    def text_limit(self) -> int:
        """Tokens one prompt may hold (Grounding DINO: the caption; OWLv2: each query)."""

    @abstractmethod
    def encode_prompt(self, class_names: Sequence[str], labels: Sequence[int] | None = None) -> EncodedPrompt:
        """One prompt for these classes, or ``PromptTooLongError`` when it does not fit."""

    def encode_prompts(
        self,
        class_names: Sequence[str],
        labels: Sequence[int] | None = None,
        max_classes_per_chunk: int | None = None,
    ) -> list[EncodedPrompt]:
        """Prompts for any number of classes: consecutive chunks that each fit (one pass per chunk)."""
        return chunk_classes(
            class_names, lambda n, lab: self.encode_prompt(n, lab), labels, max_classes_per_chunk
        )

    # -- text features ------------------------------------------------------------------------------

    @abstractmethod
    def encode_text(self, prompt: EncodedPrompt) -> Tensor:
        """The text encoder's output for one prompt, without the prompt offset (see
        ``adapt.families.text_features``)."""

    def text_features(self, prompt: EncodedPrompt, text: Tensor | None = None) -> Tensor:
        """What the detector consumes: ``text`` (or the prompt's encoding) plus the prompt offset."""
        if text is None:
            if self.text_encoder_dropped:
                raise ValueError(
                    "this detector's text encoder was replaced by a prompt export: pass its stored text "
                    "features (`text=`) instead of encoding a new prompt"
                )
            text = self.encode_text(prompt)
        if self.prompt_offset is not None:
            text = self.prompt_offset(text)
        return text

    @abstractmethod
    def offset_shape(self, prompt: EncodedPrompt | None) -> tuple[int, int]:
        """(rows, dim) of the prompt offset: one row per text position the family's prompts hold."""

    def enable_prompt_tuning(self, prompt: EncodedPrompt | None = None) -> nn.Parameter:
        """Add the zero-initialised prompt offset (once); see :class:`PromptOffset`."""
        if self.prompt_offset is None:
            rows, dim = self.offset_shape(prompt)
            ref = next(self.hf.parameters())
            self.prompt_offset = PromptOffset(rows, dim, dtype=ref.dtype, device=ref.device)
        return self.prompt_offset.offset

    @abstractmethod
    def drop_text_encoder(self) -> None:
        """Free the text encoder: a prompt export's stored features replace it from now on."""

    def eval_modules(self, mode: str) -> tuple[str, ...]:
        """Submodules (paths in this module) a mode keeps in eval mode after every ``.train()``.

        The transformers families: ``zero``, ``prompt`` and ``linear`` run everything in eval mode
        (nothing they train is stochastic, and a probe reads fixed features), ``full`` nothing (dropout
        and drop-path as transformers trains), ``lora`` the vision trunk and the text encoder (GLIP's
        LoRA semantics: adapters in the fusion and decoder train with their dropout on)."""
        if mode in ("zero", "prompt", "linear"):
            return ("hf",)
        if mode == "lora":
            return tuple(f"hf.{path}" for path in (*self.vision_modules, self.text_encoder))
        return ()

    # -- images -------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    def preprocess(
        self, images: Sequence[ImageLike], together: bool = False, max_batch: int | None = None
    ) -> list[ImageBatch]:
        """Images through the family's own processor (resize, normalise, pad).

        ``together=True``: one batch exactly as transformers' processor makes it, padded to the
        largest image (training: the loss sees one batch). Otherwise images are batched only with
        images of the same processed size, so that no image is padded for another: an image's
        detections are then the same alone or in any batch (transformers pads a batch to its largest
        image, and Grounding DINO's backbone, its GroupNorm and its two-stage query selection all see
        the padding). ``max_batch`` caps a batch.
        """
        sizes = [_image_size(im) for im in images]
        if together:
            out = self._process(list(images))
            return [ImageBatch(out["pixel_values"], out.get("pixel_mask"), sizes, list(range(len(images))))]
        groups: dict[tuple[int, ...], list[tuple[int, dict[str, Tensor]]]] = defaultdict(list)
        for i, image in enumerate(images):
            out = self._process([image])
            groups[tuple(out["pixel_values"].shape)].append((i, out))
        batches = []
        for members in groups.values():
            cap = max_batch or len(members)
            for start in range(0, len(members), cap):
                part = members[start : start + cap]
                masks = [o.get("pixel_mask") for _, o in part]
                batches.append(
                    ImageBatch(
                        torch.cat([o["pixel_values"] for _, o in part]),
                        torch.cat(masks) if masks[0] is not None else None,  # type: ignore[arg-type]
                        [sizes[i] for i, _ in part],
                        [i for i, _ in part],
                    )
                )
        return batches

    def _process(self, images: list[ImageLike]) -> dict[str, Tensor]:
        """The image processor on PIL images or [3, H, W] tensors (uint8, or float in [0, 1])."""
        kwargs: dict[str, Any] = {}
        if any(isinstance(im, Tensor) and im.is_floating_point() for im in images):
            kwargs["do_rescale"] = False
        return dict(self.processor.image_processor(images=images, return_tensors="pt", **kwargs))

    @abstractmethod
    def box_scale(self, sizes: Sequence[tuple[int, int]]) -> Tensor:
        """[B, 4] (sx, sy, sx, sy): the pixel size of the frame normalised boxes refer to."""

    # -- forward ------------------------------------------------------------------------------------

    @abstractmethod
    def run(
        self,
        batch: ImageBatch,
        prompt: EncodedPrompt,
        text: Tensor,
        labels: list[dict[str, Tensor]] | None = None,
    ) -> RawOutputs:
        """transformers' forward on prepared images and text features (offset included); with
        ``labels`` (transformers' target format), also transformers' loss."""

    def loss_targets(
        self, targets: Sequence[Mapping[str, Tensor]], prompt: EncodedPrompt, sizes: Sequence[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """adapt targets (``boxes`` [n, 4] xyxy pixels, ``labels`` [n] global) -> transformers'
        (``class_labels``: the class's place in the prompt, ``boxes``: normalised (cx, cy, w, h)).

        Boxes are normalised by the frame the model predicts in (:meth:`box_scale`): for Grounding
        DINO the image's own size, not the padded batch (transformers' processor rescales targets to
        the padded size, while the model's boxes are relative to the unpadded image). Boxes of
        classes outside this prompt (another chunk) are left out.
        """
        place = {label: i for i, label in enumerate(prompt.labels)}
        scale = self.box_scale(sizes)
        out: list[dict[str, Tensor]] = []
        for target, frame in zip(targets, scale, strict=True):
            labels = [int(x) for x in target["labels"]]
            keep = [j for j, label in enumerate(labels) if label in place]
            boxes = target["boxes"][keep].to(torch.float32)
            out.append(
                {
                    "class_labels": torch.tensor([place[labels[j]] for j in keep], dtype=torch.long),
                    "boxes": corners_to_center_format(boxes / frame.to(boxes.dtype)),  # type: ignore[dict-item]
                }
            )
        return out

    def forward(
        self,
        batch: ImageBatch,
        prompt: EncodedPrompt,
        text: Tensor | None = None,
        targets: Sequence[Mapping[str, Tensor]] | None = None,
        settings: InferenceSettings | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """transformers' losses (``targets`` given; ``"total"`` is the weighted sum transformers
        optimises) or detections per image (boxes in the images' own pixels, global labels).

        ``text``: the prompt's text features computed before (``encode_text``), else they are
        computed now; the prompt offset is added either way. ``settings``: the decoding (default
        ``self.settings``; the protocol passes ``self.evaluation``).
        """
        features = self.text_features(prompt, text)
        batch = batch.to(self.device)
        if targets is not None:
            labels = [
                {k: v.to(self.device) for k, v in t.items()}
                for t in self.loss_targets(targets, prompt, batch.sizes)
            ]
            out = self.run(batch, prompt, features, labels)
            assert out.loss is not None and out.losses is not None
            return {**out.losses, "total": out.loss}
        out = self.run(batch, prompt, features)
        return decode(
            out.logits,
            out.boxes,
            prompt.label_to_tokens,
            self.box_scale(batch.sizes).to(out.boxes.device),
            settings or self.settings,
        )

    @torch.no_grad()
    def detect(
        self,
        images: Sequence[ImageLike],
        class_names: Sequence[str] | None = None,
        prompts: Sequence[EncodedPrompt] | None = None,
        text: Tensor | None = None,
        batch_size: int = 4,
        settings: InferenceSettings | None = None,
    ) -> list[dict[str, Tensor]]:
        """Detections of every image, in input order, for ``class_names`` (chunked to fit) or given
        ``prompts`` (``text``: a single prompt's stored features, e.g. a prompt export's).
        ``settings``: the decoding (default ``self.settings``)."""
        settings = settings or self.settings
        if prompts is None:
            if class_names is None:
                raise ValueError("detect needs `class_names` or `prompts`")
            prompts = self.encode_prompts(class_names)
        prompts = list(prompts)
        if text is not None and len(prompts) != 1:
            raise ValueError("stored text features belong to one prompt; got several")
        if self.prompt_offset is not None and len(prompts) != 1:
            raise ValueError(
                "a prompt-tuned detector has one offset for one prompt; these classes need "
                f"{len(prompts)} prompts (chunks)"
            )
        if text is None and self.text_encoder_dropped:
            raise ValueError("this detector's text encoder was replaced by a prompt export: pass its `text`")
        # Raw text features once per prompt; forward adds the prompt offset.
        texts = [text] if text is not None else [self.encode_text(p) for p in prompts]
        limit = settings.num_select if settings.decoding == "topk" else None
        results: list[dict[str, Tensor] | None] = [None] * len(images)
        for batch in self.preprocess(images, max_batch=batch_size):
            per_prompt = [
                self.forward(batch, p, text=t, settings=settings) for p, t in zip(prompts, texts, strict=True)
            ]
            for j, i in enumerate(batch.index):
                dets = merge([d[j] for d in per_prompt], limit)  # type: ignore[index,misc]
                results[i] = {k: v.cpu() for k, v in dets.items()}
        return results  # type: ignore[return-value]

    def set_loss_weights(self, weights: Mapping[str, float]) -> None:
        """Loss weights from the model config's ``loss:``; families whose loss is transformers'
        own take them from the transformers config instead (``config:``)."""
        raise ValueError(
            f"family {self.name!r} uses transformers' loss and its config's weights; set them under `config:`"
        )

    # -- saving -------------------------------------------------------------------------------------

    def save_pretrained(self, folder: str | Path) -> None:
        """The transformers model and its processor, as ``from_pretrained`` reads them back: the
        folder then works as a model (its config.json defines the architecture)."""
        if self.text_encoder_dropped or self.prompt_offset is not None:
            raise ValueError(
                "save_pretrained writes the base model; a prompt-tuned detector is exported instead"
            )
        if any("lora_" in n for n, _ in self.hf.named_parameters()):
            raise ValueError("save_pretrained writes the base model; LoRA adapters are exported with peft")
        self.hf.save_pretrained(folder)
        self.processor.save_pretrained(folder)


def _image_size(image: ImageLike) -> tuple[int, int]:
    if isinstance(image, Image.Image):
        return image.height, image.width
    if isinstance(image, Tensor) and image.ndim == 3:
        return int(image.shape[-2]), int(image.shape[-1])
    raise TypeError(f"expected a PIL image or a [3, H, W] tensor, got {type(image).__name__}")
