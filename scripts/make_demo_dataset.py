"""Build the embedded demo dataset (`task=demo`) from the NEON tree tiles in the deepforest wheel.

The demo exists so that a fresh install can run the whole pipeline (train, validate, test, export)
on real aerial images with real boxes and no download. The images and VOC boxes come from
`deepforest==2.1.0` (MIT, Ben Weinstein); only small tiles are kept so the package stays small.

Usage (the wheel is fetched from PyPI, nothing is installed):

    pip download --no-deps deepforest==2.1.0 -d /tmp/wheels
    python scripts/make_demo_dataset.py /tmp/wheels/deepforest-2.1.0-py3-none-any.whl

It rewrites `adapt/data/demo/` deterministically: images as JPEG tiles, COCO json per split, and
the upstream licence. VOC corners become COCO `[x, y, x2 - x, y2 - y]`.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

from PIL import Image

OUT = Path(__file__).resolve().parents[1] / "adapt" / "data" / "demo"
TILE = 320
MIN_SIDE = 4.0  # pixels: slivers at tile borders are not trees a detector can learn
MIN_VISIBLE = 0.5  # fraction of a box's area that must fall inside a tile to keep it

# (image member, annotation member) pairs inside the wheel's deepforest/data folder.
SOURCES = [
    ("OSBS_029.png", "OSBS_029.xml"),
    ("SOAP_061.png", "SOAP_061.xml"),
    ("2019_YELL_2_541000_4977000_image_crop.png", "2019_YELL_2_541000_4977000_image_crop.xml"),
]
# Deterministic split of the tiles (by tile name), so every build gives the same files.
VAL = {"soap_061", "yell_r0_c2", "yell_r2_c0"}
TEST = {"osbs_029", "yell_r1_c2", "yell_r2_c2"}


def voc_boxes(xml_bytes: bytes) -> list[tuple[float, float, float, float]]:
    root = ET.fromstring(xml_bytes)
    boxes = []
    for obj in root.findall("object"):
        bb = obj.find("bndbox")
        assert bb is not None
        boxes.append(tuple(float(bb.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")))  # type: ignore[union-attr]
    return boxes  # type: ignore[return-value]


def tiles(name: str, image: Image.Image, boxes: list) -> list[tuple[str, Image.Image, list]]:
    """Small images stay whole; the large YELL crop is cut into TILE x TILE tiles."""
    w, h = image.size
    if w <= 400 and h <= 400:
        return [(name, image, boxes)]
    out = []
    for r in range(h // TILE):
        for c in range(w // TILE):
            x0, y0 = c * TILE, r * TILE
            kept = []
            for x1, y1, x2, y2 in boxes:
                cx1, cy1 = max(x1, x0), max(y1, y0)
                cx2, cy2 = min(x2, x0 + TILE), min(y2, y0 + TILE)
                if cx2 - cx1 < MIN_SIDE or cy2 - cy1 < MIN_SIDE:
                    continue
                if (cx2 - cx1) * (cy2 - cy1) < MIN_VISIBLE * (x2 - x1) * (y2 - y1):
                    continue
                kept.append((cx1 - x0, cy1 - y0, cx2 - x0, cy2 - y0))
            out.append((f"{name}_r{r}_c{c}", image.crop((x0, y0, x0 + TILE, y0 + TILE)), kept))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path, help="path to deepforest-2.1.0-py3-none-any.whl")
    args = parser.parse_args()

    all_tiles = []
    with zipfile.ZipFile(args.wheel) as zf:
        for img_name, xml_name in SOURCES:
            image = Image.open(io.BytesIO(zf.read(f"deepforest/data/{img_name}"))).convert("RGB")
            boxes = voc_boxes(zf.read(f"deepforest/data/{xml_name}"))
            short = img_name.split(".")[0].lower()
            short = "yell" if short.startswith("2019_yell") else short
            all_tiles += tiles(short, image, boxes)
        licence = zf.read("deepforest-2.1.0.dist-info/licenses/LICENSE").decode()

    if OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "images").mkdir(parents=True)
    (OUT / "annotations").mkdir()
    splits: dict[str, dict] = {
        s: {
            "images": [],
            "annotations": [],
            "categories": [{"id": 1, "name": "tree", "supercategory": "tree"}],
        }
        for s in ("train", "val", "test")
    }
    ann_id = 1
    for image_id, (name, image, boxes) in enumerate(sorted(all_tiles, key=lambda t: t[0]), start=1):
        if not boxes:
            continue
        split = "val" if name in VAL else "test" if name in TEST else "train"
        file_name = f"{name}.jpg"
        image.save(OUT / "images" / file_name, quality=90)
        splits[split]["images"].append(
            {"id": image_id, "file_name": file_name, "width": image.size[0], "height": image.size[1]}
        )
        for x1, y1, x2, y2 in boxes:
            w, h = x2 - x1, y2 - y1
            splits[split]["annotations"].append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": 1,
                    "bbox": [round(x1, 2), round(y1, 2), round(w, 2), round(h, 2)],
                    "area": round(w * h, 2),
                    "iscrowd": 0,
                }
            )
            ann_id += 1
    for split, coco in splits.items():
        (OUT / "annotations" / f"{split}.json").write_text(json.dumps(coco, indent=1) + "\n")
        print(f"{split}: {len(coco['images'])} images, {len(coco['annotations'])} boxes")
    (OUT / "LICENSE").write_text(
        "The images and boxes in this folder are tiles of the NEON sample data shipped in\n"
        "deepforest 2.1.0 (deepforest/data), redistributed under its licence:\n\n" + licence
    )


if __name__ == "__main__":
    main()
