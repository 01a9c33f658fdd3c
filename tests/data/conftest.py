"""Small COCO-format datasets built on the fly (PIL images + json), for the data tests."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from PIL import Image


def write_coco(
    folder: Path,
    name: str,
    images: Sequence[dict[str, Any]],
    categories: Sequence[str] = ("cat", "dog"),
    background: bool = False,
    make_images: bool = True,
) -> Path:
    """Write solid-colour images and a COCO json.

    Each image dict has file, size (w, h) and boxes [(category id, x, y, w, h[, iscrowd])].
    """
    folder.mkdir(parents=True, exist_ok=True)
    cats = [{"id": i + 1, "name": n, "supercategory": "thing"} for i, n in enumerate(categories)]
    if background:
        cats.insert(0, {"id": 0, "name": "pets-background", "supercategory": "none"})
    data: dict[str, Any] = {"images": [], "annotations": [], "categories": cats}
    ann_id = 1
    for i, spec in enumerate(images):
        w, h = spec.get("size", (64, 48))
        image_id = spec.get("id", i + 1)
        data["images"].append({"id": image_id, "file_name": spec["file"], "width": w, "height": h})
        if make_images:
            Image.new("RGB", (w, h), (10 * i % 255, 100, 200)).save(folder / spec["file"])
        for box in spec.get("boxes", []):
            cat, x, y, bw, bh, *crowd = box
            data["annotations"].append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": cat,
                    "bbox": [x, y, bw, bh],
                    "area": bw * bh,
                    "iscrowd": crowd[0] if crowd else 0,
                }
            )
            ann_id += 1
    path = folder / name
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def make_coco():
    return write_coco


def random_images(n: int, n_cats: int, seed: int, prefix: str = "img") -> list[dict[str, Any]]:
    """n image specs with 0-3 boxes of random categories (some images unannotated)."""
    import random

    rng = random.Random(seed)
    specs = []
    for i in range(n):
        boxes = [(rng.randint(1, n_cats), 2, 2, 10, 10) for _ in range(rng.randint(0, 3))]
        specs.append({"file": f"{prefix}{i}.png", "boxes": boxes, "size": (32, 24)})
    return specs
