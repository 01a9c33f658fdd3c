"""Grounding files in the real formats, written by the tests: a Flickr30k Entities release, MDETR's
COCO-style Flickr and RefCOCO files, and a handful of tiny images.

The data is small enough to check by hand (the expected values in the tests are worked out in
comments there). Image 1001 (100 x 80):

* chain 1 (people): two boxes A = (10, 10, 30, 50) and B = (60, 10, 80, 50), merged (10, 10, 80, 50)
* chains 2 and 6 (clothing): one object naming both, S = (12, 20, 28, 40)
* chain 3: scene flag, no box; chain 4: nobndbox
* chain 5 (animals/other): D = (0, 0, 10, 10); chain 7 (scene, with a box): F = (40, 60, 60, 80)

Image 1002 (128 x 128): chain 1 has two near-identical boxes (IoU 0.99, one training target).
Image 1003 is the training split.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

A, B, S, D, F = (10, 10, 30, 50), (60, 10, 80, 50), (12, 20, 28, 40), (0, 0, 10, 10), (40, 60, 60, 80)
C1, C2 = (0, 0, 100, 100), (1, 0, 100, 100)

FLICKR: dict[str, dict[str, Any]] = {
    "1001": {
        "size": (100, 80),
        "objects": [
            (["1"], A),
            (["1"], B),
            (["2", "6"], S),
            (["3"], "scene"),
            (["4"], "nobndbox"),
            (["5"], D),
            (["7"], F),
        ],
        "sentences": [
            "[/EN#1/people Two men] in [/EN#2/clothing red shirts] walk on [/EN#3/scene a street] "
            "past [/EN#4/other a sign] .",
            "[/EN#1/people a man] pets [/EN#5/animals/other a dog] beside [/EN#1/people a man] .",
            "[/EN#0/notvisual Nothing] happens here .",
            "[/EN#7/scene A field] with [/EN#6/clothing a shirt] .",
        ],
    },
    "1002": {
        "size": (128, 128),
        "objects": [(["1"], C1), (["1"], C2)],
        "sentences": ["[/EN#1/people A child] runs ."],
    },
    "1003": {
        "size": (64, 48),
        "objects": [(["1"], (5, 5, 20, 30))],
        "sentences": ["[/EN#1/people A woman] sits ."],
    },
}
SPLITS = {"train": ["1003"], "val": ["1002"], "test": ["1001", "1002"]}


def object_xml(names: list[str], what: Any) -> str:
    name_tags = "".join(f"<name>{n}</name>" for n in names)
    if what == "scene":
        return f"<object>{name_tags}<nobndbox>0</nobndbox><scene>1</scene></object>"
    if what == "nobndbox":
        return f"<object>{name_tags}<nobndbox>1</nobndbox><scene>0</scene></object>"
    x1, y1, x2, y2 = what
    box = f"<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox>"
    return f"<object>{name_tags}{box}</object>"


def write_flickr(root: Path, images: dict[str, dict[str, Any]] = FLICKR, splits: dict = SPLITS) -> Path:
    """A Flickr30k Entities release (Annotations/, Sentences/, split lists) and its images."""
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "Sentences").mkdir(exist_ok=True)
    (root / "flickr30k-images").mkdir(exist_ok=True)
    for image_id, spec in images.items():
        w, h = spec["size"]
        objects = "\n".join(object_xml(names, what) for names, what in spec["objects"])
        (root / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation>\n<filename>{image_id}.jpg</filename>\n"
            f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>\n{objects}\n</annotation>\n"
        )
        (root / "Sentences" / f"{image_id}.txt").write_text("\n".join(spec["sentences"]) + "\n")
        Image.new("RGB", (w, h), (int(image_id) % 255, 90, 160)).save(
            root / "flickr30k-images" / f"{image_id}.jpg"
        )
    for split, ids in splits.items():
        (root / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


@pytest.fixture
def flickr_root(tmp_path: Path) -> Path:
    return write_flickr(tmp_path / "flickr30k_entities")


# MDETR's conversion (flickr_combined.py) of test images 1001 (sentences 0 and 1) and 1002, written
# out by hand: one entry per caption; each annotation is a training box (IoU >= 0.95 groups merged,
# the group's last box) with the spans of every phrase of its chains; xywh with w = xmax - xmin.
MDETR_FLICKR = {
    "images": [
        {
            "file_name": "1001.jpg",
            "height": "80",
            "width": "100",
            "id": 0,
            "caption": "Two men in red shirts walk on a street past a sign .",
            "dataset_name": "flickr",
            "tokens_negative": [[0, 52]],
            "sentence_id": 0,
            "original_img_id": 1001,
            "tokens_positive_eval": [[[0, 7]], [[11, 21]]],
        },
        {
            "file_name": "1001.jpg",
            "height": "80",
            "width": "100",
            "id": 1,
            "caption": "a man pets a dog beside a man .",
            "dataset_name": "flickr",
            "tokens_negative": [[0, 31]],
            "sentence_id": 1,
            "original_img_id": 1001,
            "tokens_positive_eval": [[[0, 5]], [[11, 16]], [[24, 29]]],
        },
        {
            "file_name": "1002.jpg",
            "height": "128",
            "width": "128",
            "id": 2,
            "caption": "A child runs .",
            "dataset_name": "flickr",
            "tokens_negative": [[0, 14]],
            "sentence_id": 0,
            "original_img_id": 1002,
            "tokens_positive_eval": [[[0, 7]]],
        },
    ],
    "annotations": [
        {
            "area": 800,
            "iscrowd": 0,
            "image_id": 0,
            "category_id": 1,
            "id": 0,
            "bbox": [10, 10, 20, 40],
            "tokens_positive": [[0, 7]],
        },
        {
            "area": 800,
            "iscrowd": 0,
            "image_id": 0,
            "category_id": 1,
            "id": 1,
            "bbox": [60, 10, 20, 40],
            "tokens_positive": [[0, 7]],
        },
        {
            "area": 320,
            "iscrowd": 0,
            "image_id": 0,
            "category_id": 1,
            "id": 2,
            "bbox": [12, 20, 16, 20],
            "tokens_positive": [[11, 21]],
        },
        {
            "area": 800,
            "iscrowd": 0,
            "image_id": 1,
            "category_id": 1,
            "id": 3,
            "bbox": [10, 10, 20, 40],
            "tokens_positive": [[0, 5], [24, 29]],
        },
        {
            "area": 800,
            "iscrowd": 0,
            "image_id": 1,
            "category_id": 1,
            "id": 4,
            "bbox": [60, 10, 20, 40],
            "tokens_positive": [[0, 5], [24, 29]],
        },
        {
            "area": 100,
            "iscrowd": 0,
            "image_id": 1,
            "category_id": 1,
            "id": 5,
            "bbox": [0, 0, 10, 10],
            "tokens_positive": [[11, 16]],
        },
        {
            "area": 9900,
            "iscrowd": 0,
            "image_id": 2,
            "category_id": 1,
            "id": 6,
            "bbox": [1, 0, 99, 100],
            "tokens_positive": [[0, 7]],
        },
    ],
    "categories": [{"supercategory": "object", "id": 1, "name": "object"}],
}

# MDETR's refexp_coco_format.py layout: one entry per expression, one annotation (the referred box)
# with the root noun's spans; COCO xywh.
MDETR_REFCOCO = {
    "images": [
        {
            "file_name": "COCO_train2014_000000000009.jpg",
            "height": 80,
            "width": 100,
            "id": 10,
            "original_id": 9,
            "caption": "man on the left",
            "dataset_name": "refcoco",
            "tokens_negative": [],
        },
        {
            "file_name": "COCO_train2014_000000000009.jpg",
            "height": 80,
            "width": 100,
            "id": 11,
            "original_id": 9,
            "caption": "the dog",
            "dataset_name": "refcoco",
            "tokens_negative": [],
        },
        {
            "file_name": "COCO_train2014_000000000025.jpg",
            "height": 80,
            "width": 100,
            "id": 12,
            "original_id": 25,
            "caption": "shirt",
            "dataset_name": "refcoco",
            "tokens_negative": [],
        },
    ],
    "annotations": [
        {
            "area": 800,
            "iscrowd": 0,
            "image_id": 10,
            "category_id": 1,
            "id": 100,
            "bbox": [10, 10, 20, 40],
            "original_id": 7,
            "tokens_positive": [[0, 3]],
        },
        {
            "area": 100,
            "iscrowd": 0,
            "image_id": 11,
            "category_id": 18,
            "id": 101,
            "bbox": [0, 0, 10, 10],
            "original_id": 8,
            "tokens_positive": [[4, 7]],
        },
        {
            "area": 400,
            "iscrowd": 0,
            "image_id": 12,
            "category_id": 1,
            "id": 102,
            "bbox": [0, 0, 20, 20],
            "original_id": 9,
            "tokens_positive": [[0, 5]],
        },
    ],
    "categories": [{"supercategory": "person", "id": 1, "name": "person"}],
}


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def mdetr_flickr_file(tmp_path: Path) -> Path:
    return write_json(tmp_path / "mdetr_annotations" / "final_flickr_separateGT_test.json", MDETR_FLICKR)


@pytest.fixture
def refcoco_file(tmp_path: Path) -> Path:
    return write_json(tmp_path / "mdetr_annotations" / "finetune_refcoco_val.json", MDETR_REFCOCO)
