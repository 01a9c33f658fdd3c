"""The images a predict command reads and the files it writes, for both predict CLIs.

``adapt.predict`` and ``python -m adapt.deploy predict`` take image files and folders (a folder
stands for the images directly in it, in name order) and write one drawn JPEG per input into the
output folder. The drawn copy is named after its input (``<stem>.jpg``), except where that name
is one of the inputs themselves (``--out .`` beside ``a.jpg``: the user's image would be
re-encoded in place) or where two inputs share a stem (``d1/x.jpg d2/x.jpg``): those take
``<stem>-2.jpg``, ``<stem>-3.jpg``, ... so no input is overwritten and no drawn copy replaces
another. ``detections.json`` records each input's drawn file (``images[].drawn``).

Torch-free (numpy and Pillow only): the deployed runtime imports it, so ``adapt.predict`` and
``python -m adapt.deploy predict`` write the same files by the same code.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image, ImageDraw

from adapt.atomic import write_json

# One colour per class label, cycling.
COLORS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45")

# What a folder argument expands to (PIL reads all of them).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def expand_images(args: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Files as given; a folder becomes the image files directly in it, sorted by name.

    A folder without images, or a path that does not exist, raises FileNotFoundError in one
    sentence (naming it, and for a folder the suffixes looked for).
    """
    images: list[Path] = []
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(
                    f"{path}: a folder with no image files in it (looked for {', '.join(IMAGE_SUFFIXES)})"
                )
            images.extend(found)
        elif path.exists():
            images.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such image file or folder")
    return images


def drawn_paths(images: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]) -> list[Path]:
    """Where each input's drawn copy goes in ``out``: ``<stem>.jpg``, or ``<stem>-<n>.jpg`` (the
    smallest n >= 2 free) where that is an input or already given to an earlier input."""
    folder = Path(out)
    inputs = [Path(p) for p in images]
    taken = {p.resolve() for p in inputs}  # symbolic links and "./a.jpg" resolve to the file itself
    result = []
    for path in inputs:
        stem, n = path.stem, 1
        target = folder / f"{stem}.jpg"
        while target.resolve() in taken:
            n += 1
            target = folder / f"{stem}-{n}.jpg"
        taken.add(target.resolve())
        result.append(target)
    return result


class ImageDetections(Protocol):
    """One image's detections as both predictors return them (torch tensors or numpy arrays)."""

    @property
    def boxes(self) -> Any: ...  # [n, 4] xyxy in original-image pixels
    @property
    def scores(self) -> Any: ...  # [n]
    @property
    def labels(self) -> Any: ...  # [n], 1-based
    @property
    def names(self) -> Sequence[str]: ...
    @property
    def image_size(self) -> tuple[int, int]: ...  # (h, w)


def detections_coco(
    images: Sequence[str | os.PathLike[str]],
    results: Sequence[ImageDetections],
    names: Sequence[str],
    drawn: Sequence[Path] | None = None,
    plus_one: bool = True,
) -> dict[str, Any]:
    """A COCO detection file: boxes as xywh with the +1 convention (w = x2 - x1 + 1), with scores;
    ``plus_one=False``: a detector family's boxes, w = x2 - x1 (``adapt.boxes``, transformers').

    Image ids number the inputs 1..N; ``file_name`` is the path as given, which is what
    ``adapt.evaluate`` matches against a ground truth's images (its ids are its own). ``drawn``
    (the drawn copies) is recorded as ``images[].drawn``, the file's name in the output folder.
    The width and height are computed in the boxes' own precision (float32), as
    ``adapt.metrics.coco.coco_xywh`` computes a run's, so the two files compare exactly.
    """
    coco: dict[str, Any] = {
        "images": [],
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)],
        "annotations": [],
    }
    for image_id, (path, res) in enumerate(zip(images, results, strict=True), start=1):
        h, w = res.image_size
        entry: dict[str, Any] = {"id": image_id, "file_name": str(path), "height": h, "width": w}
        if drawn is not None:
            entry["drawn"] = drawn[image_id - 1].name
        coco["images"].append(entry)
        b = np.asarray(res.boxes).reshape(-1, 4)
        one = b.dtype.type(1 if plus_one else 0)
        xywh = np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0] + one, b[:, 3] - b[:, 1] + one], axis=-1)
        for (x1, y1, bw, bh), score, label in zip(
            xywh.tolist(), np.asarray(res.scores).tolist(), np.asarray(res.labels).tolist(), strict=True
        ):
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": int(label),
                    # As adapt.evaluate writes a run's detections, so the two files compare exactly.
                    "bbox": [round(x1, 3), round(y1, 3), round(bw, 3), round(bh, 3)],
                    "area": round(bw * bh, 3),
                    "score": float(score),
                    "iscrowd": 0,
                }
            )
    return coco


def draw(image: Image.Image, result: ImageDetections, target: Path, threshold: float) -> Path:
    """``image`` with its detections above ``threshold`` drawn, saved as JPEG at ``target`` (never an
    input: :func:`drawn_paths` names it)."""
    canvas = ImageDraw.Draw(image)
    boxes = np.asarray(result.boxes).reshape(-1, 4).tolist()
    scores, labels = np.asarray(result.scores).tolist(), np.asarray(result.labels).tolist()
    for box, score, label, name in zip(boxes, scores, labels, result.names, strict=True):
        if score < threshold:
            continue
        color = COLORS[(int(label) - 1) % len(COLORS)]
        canvas.rectangle(box, outline=color, width=2)
        canvas.text((box[0] + 2, box[1] + 1), f"{name} {score:.2f}", fill=color)
    image.save(target, quality=90)
    return target


def write_predictions(
    out: str | os.PathLike[str],
    images: Sequence[Path],
    results: Sequence[ImageDetections],
    names: Sequence[str],
    threshold: float,
    read_image: Callable[[Path], Image.Image],
    plus_one: bool = True,
) -> Path:
    """``out/detections.json`` and one drawn copy per input; returns the json's path.

    ``read_image`` is the caller's reader (adapt's or the deployed runtime's), whose errors name the
    file in the caller's own terms.
    """
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    drawn = drawn_paths(images, folder)
    coco = detections_coco(images, results, names, drawn, plus_one)
    written = write_json(coco, folder / "detections.json", indent=1)
    for path, res, target in zip(images, results, drawn, strict=True):
        draw(read_image(path), res, target, threshold)
    return written
