"""High-level Python API: build a GLIP, load weights, detect classes or phrases in images.

    from adapt.detector import Detector
    det = Detector.from_config("glip_t", checkpoint="glip_tiny_model_o365_goldg_cc_sbu.pth")
    results = det.predict(["a.jpg", pil_image], classes=["fish", "jellyfish"])
    results[0].boxes, results[0].scores, results[0].names

Images go through the official test pipeline (PIL RGB, resize to short side 800 / long side <= 1333,
BGR255 normalisation, zero padding to a multiple of 32) and boxes come back in original-image
pixels. Images are batched: GLIP does not mask the padding, so an image's scores depend slightly
on the other images of its batch (as in official evaluation); ``batch_size=1`` avoids that.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import Tensor

from adapt.base_weights import export_base_weights, load_weights
from adapt.boxes import GLIP_BOXES, BoxConvention
from adapt.data.io import read_image
from adapt.data.transforms import Resize, ToTensor, resize_boxes
from adapt.export import ExportError, load_export
from adapt.model.checkpoint import CheckpointError, LoadReport, read_config
from adapt.model.config import GLIPConfig, model_config, model_names
from adapt.model.glip import GLIP, build_glip
from adapt.model.language import TextFeatures
from adapt.model.preprocess import batch_images
from adapt.modes import InferenceText, UnknownModeError, policy_for_export
from adapt.prompt import (
    PACKAGED_TOKENIZERS,
    EncodedPrompt,
    PromptTooLongError,
    encode_caption,
    encode_prompt_chunks,
    load_tokenizer,
)

ImageInput = str | Path | Image.Image
MARKED_PHRASE = re.compile(r"\[([^\[\]]+)\]")


@dataclass
class Detections:
    """Detections of one image, in its original pixels.

    ``boxes`` [n, 4] xyxy in the detector's box convention (``boxes`` of ``Detector``: GLIP's
    legacy "+1", width = x2 - x1 + 1; of ``adapt.family_detector.FamilyDetector``: transformers'),
    ``scores`` [n], ``labels`` [n] 1-based index into the classes or marked phrases, ``names`` [n],
    ``image_size`` the original (height, width).
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    names: list[str]
    image_size: tuple[int, int]

    def __len__(self) -> int:
        return len(self.scores)


class Detector:
    """A GLIP plus everything needed to go from images and class names to boxes."""

    boxes: ClassVar[BoxConvention] = GLIP_BOXES  # what a COCO writer needs to know of its boxes

    def __init__(self, model: GLIP, device: str | torch.device = "cpu", batch_size: int = 4) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.batch_size = batch_size
        self.tokenizer = load_tokenizer(model.cfg.language.tokenizer)
        self.load_report: LoadReport | None = None
        # What predict() detects when given no classes: an export's own caption and, where the
        # mode learned them, its stored text features (then the text encoder is dropped), or the
        # captions of its prompt ensemble (adapt.model.ensemble).
        self.export_text: InferenceText | None = None
        # The run's evaluation batch size, where a loaded export records it (from_export).
        self.recorded_batch_size: int | None = None

    @property
    def default_classes(self) -> list[str]:
        """What ``predict()`` detects when given no classes: the loaded export's classes, else none."""
        return list(self.export_text.prompt.class_names) if self.export_text is not None else []

    @classmethod
    def from_config(
        cls,
        model: str | GLIPConfig | Mapping[str, Any] = "glip_t",
        checkpoint: str | Path | None = None,
        device: str | torch.device = "cpu",
        download: bool = False,
        batch_size: int = 4,
    ) -> Detector:
        """Build from a model name (``conf/model/``), a GLIPConfig or an ``arch`` dict.

        ``checkpoint``: an official ``.pth`` or an adapt ``.safetensors``. Without one, a named
        model's official checkpoint is taken from the Hugging Face cache (``download=True`` fetches it);
        a model with no released weights (glip_mini) or a bare config gets seeded random weights.
        """
        official: dict[str, Any] | None = None
        if isinstance(model, str):
            official = model_config(model)
            cfg = GLIPConfig.from_dict(official["arch"])
        elif isinstance(model, GLIPConfig):
            cfg = model
        else:
            cfg = GLIPConfig.from_dict(dict(model))
        if checkpoint is None and official is not None:
            from adapt.download import require_checkpoint

            checkpoint = require_checkpoint(official, download=download)
        glip = build_glip(cfg)
        report = load_weights(glip, checkpoint, official, download) if checkpoint is not None else None
        detector = cls(glip, device=device, batch_size=batch_size)
        detector.load_report = report
        return detector

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        batch_size: int = 4,
        tokenizer: str | Path | None = None,
    ) -> Detector:
        """An adapt ``.safetensors`` file carries its GLIPConfig: no model name needed.

        The file is data: the tokenizer it names must be one adapt ships, or ``tokenizer`` (a folder
        the user passes) replaces it.
        """
        cfg = read_config(path)
        if cfg is None:
            raise ValueError(
                f"{path}: no GLIPConfig stored; use Detector.from_config(model_name, checkpoint=...)"
            )
        if tokenizer is not None:
            cfg = cfg.with_tokenizer(str(tokenizer))
        elif cfg.language.tokenizer not in PACKAGED_TOKENIZERS:
            raise CheckpointError(
                f"{path}: names tokenizer {cfg.language.tokenizer!r}, which adapt does not ship; pass the "
                "tokenizer folder yourself (Detector.from_checkpoint(..., tokenizer=DIR))"
            )
        return cls.from_config(cfg, checkpoint=path, device=device, batch_size=batch_size)

    @classmethod
    def from_export(
        cls,
        path: str | Path,
        model: str | None = None,
        checkpoint: str | Path | None = None,
        device: str | torch.device = "cpu",
        batch_size: int | None = None,
        download: bool = False,
        tokenizer: str | Path | None = None,
    ) -> Detector:
        """The base model a training run adapted, plus what the run exported (``<run>/export``).

        The detector is the run's own: the recorded base weights (the official checkpoint from the
        adapt cache, ``download=True`` fetches it; or ``checkpoint``, which must have the recorded
        SHA-256, else ExportError names the expected hash), the recorded architecture with the run's
        test-time input sizes and inference settings, and the run's caption. A prompt-tuning
        artifact carries its prompt embeddings, so the text encoder is dropped; ``predict()`` without
        classes detects the run's classes with the run's caption in every mode, so it reproduces the
        run's test detections. ``model`` names another model config of the same architecture;
        ``tokenizer`` is a tokenizer folder, for an export whose tokenizer adapt does not ship.
        ``batch_size`` defaults to the run's evaluation batch size where the export records it
        (``eval_batch_size``; else 4): padding depends on the batch, so that size comes closest to
        the run's test detections (another gives the same AP, scores further off in the last bits).

        The export's JSON is data: its mode is resolved by name through the mode registry, its
        model name must be a shipped model config, and nothing it names is imported or opened.
        """
        artifact = load_export(path)
        if (artifact.config.get("base_model") or {}).get("family"):
            raise ExportError(
                f"{artifact.metadata_file}: a detector family's export; load it with "
                "adapt.family_detector.FamilyDetector.from_export"
            )
        try:
            policy = policy_for_export(artifact.policy_name)
        except UnknownModeError as exc:
            raise ExportError(f"{artifact.metadata_file}: {exc}") from None
        name = model or artifact.base_name
        official = model_config(name) if name in model_names() else None
        if model is not None and official is None:
            raise ValueError(f"unknown model config {model!r}; known: {model_names()}")
        # The recorded architecture, unless another model is named (or a format-1 export has none).
        replace = official is not None and (model is not None or "arch" not in artifact.config)
        cfg = artifact.glip_config(official["arch"] if replace else None, tokenizer)  # type: ignore[index]
        weights = export_base_weights(artifact, checkpoint, official, download)
        seed = artifact.random_init_seed
        glip = build_glip(cfg, seed=seed if seed is not None else 0)
        report = load_weights(glip, weights, official, download) if weights is not None else None
        text = policy.load_export(artifact, glip)
        if text.features is not None:
            glip.language_backbone = None  # type: ignore[assignment]  # the stored text replaces it
        detector = cls(glip, device=device, batch_size=batch_size or artifact.eval_batch_size or 4)
        detector.recorded_batch_size = artifact.eval_batch_size
        detector.load_report = report
        detector.export_text = text
        return detector

    # ----------------------------------------------------------------------------------------------

    def encode(
        self,
        classes: Sequence[str] | None = None,
        caption: str | None = None,
        phrases: Sequence[str] | None = None,
    ) -> list[EncodedPrompt]:
        """Prompts to run: one per chunk of classes, or one caption with its phrases.

        ``caption`` marks its phrases in square brackets ("a [red car] next to a [dog]") unless
        ``phrases`` lists them (each found at its first occurrence after the previous one).
        """
        max_len = self.model.cfg.language.max_query_len
        if (classes is None) == (caption is None):
            raise ValueError("give either `classes` or `caption` (or load a prompt with from_export)")
        if classes is not None:
            if not classes:
                raise ValueError("`classes` is empty")
            return encode_prompt_chunks(list(classes), self.tokenizer, max_query_len=max_len)
        assert caption is not None
        return [self._encode_caption(caption, phrases, max_len)]

    def _encode_caption(self, caption: str, phrases: Sequence[str] | None, max_len: int) -> EncodedPrompt:
        spans: list[tuple[int, int]] = []
        if phrases is None:
            text, names, pos = "", [], 0
            for m in MARKED_PHRASE.finditer(caption):
                text += caption[pos : m.start()]
                spans.append((len(text), len(text) + len(m.group(1))))
                text += m.group(1)
                names.append(m.group(1))
                pos = m.end()
            caption = text + caption[pos:]
            if not names:
                raise ValueError("no phrase marked in the caption: mark them as [phrase] or pass `phrases`")
        else:
            names, start = list(phrases), 0
            for phrase in names:
                at = caption.find(phrase, start)
                if at < 0:
                    raise ValueError(f"phrase {phrase!r} not found in caption {caption!r}")
                spans.append((at, at + len(phrase)))
                start = at + len(phrase)
        n_tokens = len(self.tokenizer(caption)["input_ids"])
        if n_tokens > max_len:
            raise PromptTooLongError(names, n_tokens, max_len)
        return encode_caption(caption, spans, names, self.tokenizer, max_query_len=max_len)

    def preprocess(self, image: ImageInput) -> tuple[Tensor, tuple[int, int]]:
        """Official test transform of one image -> (RGB [3, h, w] in [0, 1] resized, original (H, W))."""
        pil = read_image(image) if isinstance(image, str | Path) else image.convert("RGB")
        original = (pil.height, pil.width)
        inp = self.model.cfg.input
        resized, _ = Resize(inp.min_size_test, inp.max_size_test)(pil, {})
        tensor, _ = ToTensor()(resized, {})
        return tensor, original

    @torch.no_grad()
    def predict(
        self,
        images: ImageInput | Sequence[ImageInput],
        classes: Sequence[str] | None = None,
        caption: str | None = None,
        phrases: Sequence[str] | None = None,
        batch_size: int | None = None,
    ) -> list[Detections]:
        """Detect ``classes`` (or the marked phrases of ``caption``) in every image.

        Returns one ``Detections`` per image, boxes in original-image pixels. Class lists too long
        for one caption run in chunks (each chunk a forward pass); detections of all chunks are
        merged and the best ``detections_per_image`` kept.
        """
        items: list[ImageInput] = [images] if isinstance(images, str | Path | Image.Image) else list(images)
        queries = self._queries(classes, caption, phrases)
        names = {lab: name for q in queries for lab, name in q.names.items()}
        bs = batch_size or self.batch_size
        results: list[Detections] = []
        for start in range(0, len(items), bs):
            loaded = [self.preprocess(im) for im in items[start : start + bs]]
            batch, sizes = batch_images([t for t, _ in loaded], self.model.cfg.input)
            batch = batch.to(self.device)
            per_query = [
                self.model(batch, sizes, text=q.text(len(loaded)), label_to_tokens=q.label_to_tokens)
                for q in queries
            ]
            for i, (_, original) in enumerate(loaded):
                results.append(self._merge([d[i] for d in per_query], sizes[i], original, names))
        return results

    def _queries(
        self, classes: Sequence[str] | None, caption: str | None, phrases: Sequence[str] | None
    ) -> list[_Query]:
        """One query per forward pass: a prompt chunk, a caption, or the loaded export's text."""
        exported = self.export_text
        if classes is None and caption is None and exported is not None:
            if exported.ensemble:  # a prompt ensemble: one forward pass over all its captions
                return [self._text_query(list(exported.ensemble))]
            if exported.features is None:
                return [self._text_query(exported.prompt)]
            p = exported.prompt
            return [
                _Query(
                    dict(zip(p.labels, p.class_names, strict=True)),
                    p.label_to_tokens,
                    lambda n: exported.batch(n, self.device),
                )
            ]
        if self.model.language_backbone is None:
            raise ValueError("a prompt artifact replaced the text encoder: call predict without classes")
        return [self._text_query(p) for p in self.encode(classes, caption, phrases)]

    def _text_query(self, p: EncodedPrompt | list[EncodedPrompt]) -> _Query:
        if isinstance(p, list):  # a prompt ensemble: the model combines the prompts' class scores
            maps = [dict(q.label_to_tokens) for q in p]
            return _Query(
                dict(zip(p[0].labels, p[0].class_names, strict=True)),
                maps,
                lambda n: [self._encode(q, n) for q in p],
            )
        return _Query(
            dict(zip(p.labels, p.class_names, strict=True)), p.label_to_tokens, lambda n: self._encode(p, n)
        )

    def _encode(self, p: EncodedPrompt, batch_size: int) -> TextFeatures:
        """BERT's features of ``p`` for a batch of ``batch_size`` images."""
        return self.model.encode_text(
            p.input_ids[None].expand(batch_size, -1).to(self.device),
            p.attention_mask[None].expand(batch_size, -1).to(self.device),
        )

    def _merge(
        self,
        chunks: list[dict[str, Tensor]],
        size: tuple[int, int],
        original: tuple[int, int],
        names: dict[int, str],
    ) -> Detections:
        boxes = torch.cat([c["boxes"] for c in chunks]).cpu()
        scores = torch.cat([c["scores"] for c in chunks]).cpu()
        labels = torch.cat([c["labels"] for c in chunks]).cpu()
        # Best first; with several chunks (disjoint classes, so class-wise NMS already holds) keep the
        # best detections_per_image overall.
        keep = scores.argsort(descending=True, stable=True)[: self.model.cfg.inference.detections_per_image]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        # Back to the original image as official evaluation does (BoxList.resize: ratios, no +1).
        boxes = resize_boxes(boxes, size, original)
        return Detections(boxes, scores, labels, [names[int(lab)] for lab in labels], original)


@dataclass
class _Query:
    """What one forward pass needs on the text side."""

    names: dict[int, str]  # label -> class name
    label_to_tokens: dict[int, list[int]] | list[dict[int, list[int]]]  # a list: one map per prompt
    text: Callable[[int], TextFeatures | list[TextFeatures]]  # batch size -> text features (per prompt)
