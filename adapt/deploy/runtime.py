"""The deployed detector: an ONNX file in, detections out, with numpy, Pillow and onnxruntime only.

    from adapt.deploy.runtime import DeployedDetector
    det = DeployedDetector("detector.onnx")
    results = det.predict(["a.jpg", "b.jpg"])       # boxes in original pixels, best first

Everything around the graph is adapt's test pipeline, step for step, in numpy: the official resize
(short side ``min_size_test``, long side capped at ``max_size_test``, truncated; Pillow's bilinear,
which is what torchvision's resize of a PIL image calls), ``ToTensor`` (/ 255 in float32), the
BGR255 normalisation with the recorded mean and std, zero padding of the batch to a multiple of 32
(an image's scores depend on its batch's padding, as in adapt; ``batch_size=1`` is adapt.predict's
default), then ``adapt.deploy.postprocess``. The file's metadata says everything; this module
imports nothing from torch, torchvision, transformers or hydra.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image, UnidentifiedImageError

from adapt.deploy.format import METADATA_KEY, DeployedFileError, parse
from adapt.deploy.postprocess import Settings, detect

F32 = np.float32


class ImageError(ValueError):
    """An input image cannot be read or is outside what the deployed graph accepts."""


@dataclass
class Detections:
    """One image's detections in its original pixels, best first (``adapt.detector.Detections`` in numpy).

    ``boxes`` [n, 4] xyxy with GLIP's +1 convention, ``scores`` [n], ``labels`` [n] 1-based,
    ``names`` [n], ``image_size`` the original (height, width).
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    names: list[str]
    image_size: tuple[int, int]

    def __len__(self) -> int:
        return len(self.scores)


def resize_shape(h: int, w: int, min_size: int, max_size: int | None) -> tuple[int, int]:
    """The official resize's output (h, w); the rule of ``adapt.data.transforms.resize_shape``
    (kept equal by tests/deploy), restated here because that module imports torch."""
    size = min_size
    short, long = (w, h) if w <= h else (h, w)
    if max_size is not None and long / short * size > max_size:
        size = round(max_size * short / long)
    if short == size:
        return h, w
    if w < h:
        return int(size * h / w), size
    return size, int(size * w / h)


def read_image(path: str | os.PathLike[str]) -> Image.Image:
    """``Image.open(path).convert("RGB")`` as adapt reads images (EXIF orientation ignored, as the
    official loader does), with every failure one sentence naming the file."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError as exc:
        raise ImageError(f"{path}: image file not found") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{path}: not a readable image (unknown or corrupt format)") from exc
    except (IsADirectoryError, PermissionError) as exc:
        raise ImageError(f"{path}: cannot read file ({exc.strerror})") from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{path}: image is truncated or corrupt ({exc})") from exc


class DeployedDetector:
    """An onnxruntime session of a file written by ``python -m adapt.deploy export``, plus its metadata."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        providers: Sequence[str] = ("CPUExecutionProvider",),
        threads: int = 0,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DeployedFileError(f"{self.path}: deployed detector file not found")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.log_severity_level = 3  # errors only: the exporter's unused initializers are fine
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=list(providers))
        except Exception as exc:  # onnxruntime raises its own InvalidProtobuf / Fail / InvalidGraph
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DeployedFileError(
                f"{self.path}: not a readable ONNX model ({first[:200]}); it is truncated or damaged, "
                "export it again"
            ) from exc
        custom = self.session.get_modelmeta().custom_metadata_map
        self.meta: dict[str, Any] = parse(custom.get(METADATA_KEY), str(self.path))
        graph = self.meta["graph"]
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if inputs != [graph["input"]] or outputs != graph["outputs"]:
            raise DeployedFileError(
                f"{self.path}: the graph's inputs {inputs} / outputs {outputs} are not those "
                "its metadata records"
            )
        self.settings = Settings.from_metadata(self.meta)
        inp = self.meta["input"]
        self.min_size, self.max_size = int(inp["min_size_test"]), int(inp["max_size_test"])
        # [3, 1, 1] in BGR order, float32 (adapt builds them as float32 tensors from the config)
        self.mean = np.array(inp["pixel_mean"], dtype=F32)[:, None, None]
        self.std = np.array(inp["pixel_std"], dtype=F32)[:, None, None]
        self.divisibility = int(inp["size_divisibility"])
        self.names = dict(zip(self.meta["labels"], self.meta["class_names"], strict=True))

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """RGB PIL image -> resized, normalised [3, h, w] float32 (adapt's Resize, ToTensor, normalize)."""
        h, w = resize_shape(image.height, image.width, self.min_size, self.max_size)
        if (h, w) != (image.height, image.width):
            image = image.resize((w, h), Image.Resampling.BILINEAR)
        rgb = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).astype(F32) / F32(255)
        return (rgb[::-1] * F32(255) - self.mean) / self.std

    def batch(self, images: Sequence[np.ndarray], names: Sequence[str]) -> np.ndarray:
        """Zero-pad normalised images into one batch (top-left), checked against the graph's sizes."""
        height = max(im.shape[1] for im in images)
        width = max(im.shape[2] for im in images)
        m = self.divisibility
        height, width = int(math.ceil(height / m) * m), int(math.ceil(width / m) * m)
        graph = self.meta["graph"]
        for axis, value in (("height", height), ("width", width)):
            limits = graph[axis]
            if not limits["min"] <= value <= limits["max"] or value % limits["multiple"]:
                raise ImageError(
                    f"{', '.join(names)}: resized and padded to {height} x {width}, "
                    "but the deployed graph takes "
                    f"{axis}s of {limits['min']} to {limits['max']} px in steps of {limits['multiple']}"
                )
        out = np.zeros((len(images), 3, height, width), dtype=F32)
        for i, im in enumerate(images):
            out[i, :, : im.shape[1], : im.shape[2]] = im
        return out

    def predict(
        self, images: Sequence[str | os.PathLike[str] | Image.Image], batch_size: int = 1
    ) -> list[Detections]:
        """Detect the file's classes in every image; one ``Detections`` per image, original pixels."""
        limit = self.meta["graph"]["batch"]["max"]
        if not 1 <= batch_size <= limit:
            raise ValueError(f"batch_size must be 1..{limit}, got {batch_size}")
        results: list[Detections] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            pils = [im.convert("RGB") if isinstance(im, Image.Image) else read_image(im) for im in chunk]
            arrays = [self.preprocess(p) for p in pils]
            labels = [str(im) if not isinstance(im, Image.Image) else "image" for im in chunk]
            outputs = self.session.run(None, {self.meta["graph"]["input"]: self.batch(arrays, labels)})
            levels = self.meta["graph"]["levels"]
            for i, (pil, arr) in enumerate(zip(pils, arrays, strict=True)):
                per_level = [
                    (outputs[k][i], outputs[levels + k][i], outputs[2 * levels + k][i]) for k in range(levels)
                ]
                boxes, scores, labs = detect(
                    per_level, (arr.shape[1], arr.shape[2]), (pil.height, pil.width), self.settings
                )
                results.append(
                    Detections(
                        boxes, scores, labs, [self.names[int(v)] for v in labs], (pil.height, pil.width)
                    )
                )
        return results
