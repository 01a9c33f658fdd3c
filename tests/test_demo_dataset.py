"""The embedded demo dataset (task=demo): real tree tiles, valid COCO, boxes inside their images."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
from PIL import Image
from pycocotools.coco import COCO

import adapt

DEMO = Path(adapt.__file__).parent / "data" / "demo"


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_demo_split_loads_with_pycocotools_and_boxes_lie_inside_images(split: str):
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(DEMO / "annotations" / f"{split}.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["tree"]
    assert coco.getImgIds(), f"{split} has no images"
    for img in coco.loadImgs(coco.getImgIds()):
        with Image.open(DEMO / "images" / img["file_name"]) as im:
            assert im.size == (img["width"], img["height"])
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
        assert anns, f"{img['file_name']} has no boxes"
        for a in anns:
            x, y, w, h = a["bbox"]
            assert w > 0 and h > 0
            assert x >= 0 and y >= 0 and x + w <= img["width"] and y + h <= img["height"]


def test_demo_splits_are_disjoint_and_small():
    names = {}
    for split in ("train", "val", "test"):
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(DEMO / "annotations" / f"{split}.json"))
        names[split] = {i["file_name"] for i in coco.loadImgs(coco.getImgIds())}
    assert not (
        names["train"] & names["val"] or names["train"] & names["test"] or names["val"] & names["test"]
    )
    size = sum(p.stat().st_size for p in DEMO.rglob("*") if p.is_file())
    assert size < 5 * 2**20, f"demo data is {size} bytes; keep the package small"
    assert "MIT" in (DEMO / "LICENSE").read_text()
