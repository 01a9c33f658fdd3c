"""COCO-format detection data: validated loading and the dataset that feeds GLIP.

Validation happens once, when a split is opened, so a broken file fails in seconds with its name
and the offending entry instead of hours later inside a DataLoader worker. The dataset reproduces
the official loaders (spec 4.4): the training split drops crowd boxes and images whose boxes are
all degenerate (w or h <= 1) or absent; evaluation splits keep every image.

Boxes are corrected once, when a file is loaded (`fix_boxes`): a box with non-positive width or
height, or lying wholly outside its image, is dropped, and one that crosses the image border is
clipped to it, with a warning that counts them. The official code evaluates against the raw file,
where such boxes can never be matched by a detector (its boxes are clipped to the image), so a
perfect detector scored below 100; here training targets and the COCOeval ground truth are the
same corrected boxes.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import warnings
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torchvision.transforms.functional as F
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from adapt.data.errors import DataError, DataWarning
from adapt.data.io import image_size, read_image, read_json
from adapt.data.transforms import clip_boxes

log = logging.getLogger(__name__)

Json = dict[str, Any]


def load_coco_json(
    path: str | Path, drop_background: bool = True, split: str | None = None, fix: bool = True
) -> Json:
    """Read and validate a COCO detection file; optionally drop Roboflow's background category.

    Roboflow exports carry a category with id 0 named after the whole dataset (supercategory
    "none"); the official ODinW files (`annotations_without_background.json`) delete it so that
    ids start at 1 and no "background" phrase enters the prompt. `drop_background` does the same to
    any file, along with annotations that point to it. `fix` corrects boxes against the sizes the
    file records (`fix_boxes`, module docstring); `split` only names the split in its warning.
    """
    path = Path(path)
    data = read_json(path)
    validate_coco(data, path)
    if drop_background and any(c["id"] == 0 for c in data["categories"]):
        data = _drop_background(data, path)
    if fix:
        data = fix_boxes(data, path, recorded_sizes(data), split=split)
    return data


def _drop_background(data: Json, path: Path) -> Json:
    """Category 0 and its boxes removed; boxes are real data, so dropping some is a warning."""
    name = next(c["name"] for c in data["categories"] if c["id"] == 0)
    dropped = sum(1 for a in data["annotations"] if a["category_id"] == 0)
    data = dict(data)
    data["categories"] = [c for c in data["categories"] if c["id"] != 0]
    data["annotations"] = [a for a in data["annotations"] if a["category_id"] != 0]
    if dropped:
        warnings.warn(
            f"{path}: category 0 ({name!r}) was dropped as Roboflow's background category together with its "
            f"{dropped} annotations, because the task sets drop_background: true; if it is a real category, "
            "set task.drop_background=false to keep it",
            DataWarning,
            stacklevel=3,
        )
    else:
        log.info("%s: dropped background category 0 (%r, no annotations)", path, name)
    return data


def _finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _positive_number(value: Any) -> bool:
    return _finite_number(value) and value > 0


def recorded_sizes(data: Json) -> dict[Any, tuple[float, float]]:
    """(width, height) of each image whose entry records a usable size; others are left out."""
    return {
        img["id"]: (img["width"], img["height"])
        for img in data["images"]
        if _positive_number(img.get("width")) and _positive_number(img.get("height"))
    }


def _ids(values: Sequence[Any], shown: int = 5) -> str:
    listed = ", ".join(map(str, values[:shown]))
    return listed + (f" and {len(values) - shown} more" if len(values) > shown else "")


def fix_boxes(
    data: Json,
    path: str | Path,
    sizes: Mapping[Any, tuple[float, float]],
    split: str | None = None,
    only: Collection[Any] | None = None,
) -> Json:
    """Drop empty or off-image boxes and clip border-crossing ones to their image; warn with counts.

    `sizes` maps image id -> (width, height) of the pixels the model sees; an image without a
    size only loses boxes of non-positive width or height. Clipping works in COCO's continuous
    xywh (x + w <= W), which is exactly the +1-convention clip (x2 = x + w - 1 <= W - 1) that
    training applies, so the training targets equal the evaluation ground truth. `area` (COCOeval's
    small/medium/large) is capped at the clipped box and filled with w * h where absent, and a
    missing `iscrowd` becomes 0: COCOeval needs both and would otherwise fail after training.
    `only` restricts the check to those image ids. Returns a new dict; `data` is not modified.
    """
    empty, outside, clipped = [], [], []
    kept = []
    for ann in data["annotations"]:
        if only is not None and ann["image_id"] not in only:
            kept.append(ann)
            continue
        x, y, w, h = ann["bbox"]
        if w <= 0 or h <= 0:
            empty.append(ann["id"])
            continue
        fixed = dict(ann)
        if not _finite_number(ann.get("area")):
            fixed["area"] = w * h
        fixed.setdefault("iscrowd", 0)
        size = sizes.get(ann["image_id"])
        if size is not None:
            x1, y1 = max(x, 0), max(y, 0)
            x2, y2 = min(x + w, size[0]), min(y + h, size[1])
            if x2 <= x1 or y2 <= y1:
                outside.append(ann["id"])
                continue
            if (x1, y1, x2, y2) != (x, y, x + w, y + h):
                clipped.append(ann["id"])
                fixed["bbox"] = [x1, y1, x2 - x1, y2 - y1]
                fixed["area"] = min(fixed["area"], (x2 - x1) * (y2 - y1))
        kept.append(fixed)
    if empty or outside or clipped:
        parts = []
        if empty:
            parts.append(f"dropped {len(empty)} with non-positive width or height (ids {_ids(empty)})")
        if outside:
            parts.append(f"dropped {len(outside)} lying wholly outside their image (ids {_ids(outside)})")
        if clipped:
            parts.append(f"clipped {len(clipped)} to their image (ids {_ids(clipped)})")
        where = f"{path} ({split} split)" if split else str(path)
        warnings.warn(
            f"{where}: of {len(data['annotations'])} boxes, {'; '.join(parts)}; "
            "training and evaluation both use the corrected boxes",
            DataWarning,
            stacklevel=3,
        )
    return dict(data, annotations=kept)


def validate_coco(data: Any, path: Path) -> None:
    """Check the structure the loaders rely on; raise a DataError naming the file and the entry."""
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a COCO object with images/annotations/categories")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path}: missing or invalid '{key}' list")
    data.setdefault("annotations", [])
    if not isinstance(data["annotations"], list):
        raise DataError(f"{path}: 'annotations' is not a list")
    if not data["categories"]:
        raise DataError(f"{path}: no categories")
    image_ids: set[int] = set()
    for img in data["images"]:
        if not isinstance(img, dict) or not {"id", "file_name"} <= img.keys():
            raise DataError(f"{path}: image entry without id/file_name: {str(img)[:200]}")
        if not _integer(img["id"]):
            # Detections are matched to images by id (COCOeval, results files); a string id used to
            # pass here and then fail inside a DataLoader worker, after training had started.
            raise DataError(
                f"{path}: image {img['file_name']!r} has id {img['id']!r}, not an integer; COCO image ids "
                "are integers: number the images 1, 2, ... and set each annotation's image_id to its "
                "image's number"
            )
        if img["id"] in image_ids:
            raise DataError(f"{path}: duplicate image id {img['id']}")
        image_ids.add(img["id"])
    cat_ids: set[int] = set()
    for cat in data["categories"]:
        if not isinstance(cat, dict) or not {"id", "name"} <= cat.keys():
            raise DataError(f"{path}: category entry without id/name: {str(cat)[:200]}")
        if not _integer(cat["id"]):
            raise DataError(f"{path}: category {cat['name']!r} has id {cat['id']!r}, not an integer")
        if cat["id"] in cat_ids:
            raise DataError(f"{path}: duplicate category id {cat['id']}")
        cat_ids.add(cat["id"])
    ann_ids: set[Any] = set()
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise DataError(f"{path}: annotation is not an object: {str(ann)[:200]}")
        if "id" not in ann:
            raise DataError(f"{path}: annotation number {i + 1} has no id: {str(ann)[:200]}")
        aid = ann["id"]
        if aid in ann_ids:
            # pycocotools indexes annotations by id: the second would silently replace the first.
            raise DataError(f"{path}: duplicate annotation id {aid!r}")
        ann_ids.add(aid)
        if ann.get("image_id") not in image_ids:
            raise DataError(f"{path}: annotation {aid} refers to unknown image id {ann.get('image_id')}")
        if ann.get("category_id") not in cat_ids:
            raise DataError(
                f"{path}: annotation {aid} refers to unknown category id {ann.get('category_id')}"
            )
        box = ann.get("bbox")
        if (
            not isinstance(box, list | tuple)
            or len(box) != 4
            or not all(isinstance(v, int | float) and math.isfinite(v) for v in box)
        ):
            raise DataError(f"{path}: annotation {aid} has an invalid bbox {box!r} (need 4 finite numbers)")


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def unreadable_images_error(problems: Sequence[str], where: str) -> DataError:
    """One sentence for one or many unreadable images: the first in full, the rest counted."""
    more = f" ({len(problems) - 1} more images are unreadable too)" if len(problems) > 1 else ""
    return DataError(f"{problems[0]}; it is listed in {where}{more}")


def coco_from_dict(data: Json) -> COCO:
    """A pycocotools COCO built from memory, without its index-building prints."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def xywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """COCO json xywh -> xyxy with the +1 convention: x2 = x + w - 1 (spec 6.6)."""
    x, y, w, h = boxes.unbind(-1)
    return torch.stack([x, y, x + w - 1, y + h - 1], dim=-1)


def _usable(ann: Json) -> bool:
    return not ann.get("iscrowd", 0)


def _has_valid_box(anns: Sequence[Json]) -> bool:
    """Official `has_valid_annotation`: some box has both w > 1 and h > 1."""
    return any(a["bbox"][2] > 1 and a["bbox"][3] > 1 for a in anns)


class CocoDetection(Dataset):
    """One split of a COCO-format dataset, yielding `(image [3,h,w] in [0,1], target)`.

    `category_ids` fixes the label space of the whole task (label = index + 1), so a few-shot file
    or a split that lacks a category keeps the same labels as the others; the absent category is
    reported as a DataWarning instead of surfacing later as an empty AP.
    """

    def __init__(
        self,
        data: Json,
        ann_file: str | Path,
        image_dir: str | Path,
        category_ids: Sequence[int],
        train: bool,
        transforms: Callable[[Any, dict[str, Any]], tuple[Any, dict[str, Any]]] | None = None,
        split: str = "",
        check_files: bool = True,
    ) -> None:
        self.ann_file = Path(ann_file)
        self.image_dir = Path(image_dir)
        self.split = split or self.ann_file.stem
        self.train = train
        self.transforms = transforms
        self.category_ids = list(category_ids)
        self.label_of = {cid: i + 1 for i, cid in enumerate(self.category_ids)}
        unknown = sorted({a["category_id"] for a in data["annotations"]} - set(self.label_of))
        if unknown:
            raise DataError(f"{self.ann_file}: annotations use category ids {unknown} not in the task")
        data = dict(data)
        data["categories"] = [c for c in data["categories"] if c["id"] in self.label_of]
        # The stored pixels, read from each file's header: what the model sees and boxes are clipped to.
        self.stored_sizes: dict[Any, tuple[int, int]] | None = None
        if check_files:
            self.stored_sizes = self._read_sizes(data)
            data = self._fix_to_stored_sizes(data, self.stored_sizes)
        self.coco = coco_from_dict(data)
        self.stats: dict[str, int] = defaultdict(int)
        self.ids = self._select_images()
        self._check_categories()

    @property
    def where(self) -> str:
        """The annotation file and split, as errors and warnings name them."""
        return f"{self.ann_file} ({self.split} split)"

    def _select_images(self) -> list[int]:
        ids = sorted(self.coco.imgs)
        self.stats["images"] = len(ids)
        self.stats["crowd_boxes"] = sum(1 for a in self.coco.anns.values() if not _usable(a))
        if not self.train:
            return ids
        kept = []
        for image_id in ids:
            anns = [a for a in self.coco.imgToAnns[image_id] if _usable(a)]
            if not anns:
                self.stats["dropped_no_boxes"] += 1
            elif not _has_valid_box(anns):
                self.stats["dropped_degenerate"] += 1
            else:
                kept.append(image_id)
        dropped = len(ids) - len(kept)
        if dropped or self.stats["crowd_boxes"]:
            log.info(
                "%s: training uses %d of %d images (%d without boxes, %d with only w or h <= 1; "
                "%d crowd boxes ignored), as the official loader does",
                self.ann_file,
                len(kept),
                len(ids),
                self.stats["dropped_no_boxes"],
                self.stats["dropped_degenerate"],
                self.stats["crowd_boxes"],
            )
        if not kept:
            raise DataError(f"{self.ann_file}: no training image has a usable box (non-crowd, w and h > 1)")
        return kept

    def _check_categories(self) -> None:
        present = {a["category_id"] for i in self.ids for a in self.coco.imgToAnns[i] if _usable(a)}
        missing = [
            self.coco.cats[c]["name"] for c in self.category_ids if c not in present and c in self.coco.cats
        ]
        missing += [f"id {c}" for c in self.category_ids if c not in self.coco.cats]
        if missing:
            warnings.warn(
                f"{self.ann_file}: no example of {', '.join(map(str, missing))} in split '{self.split}'; "
                "its AP is undefined here and it gets no positive during training",
                DataWarning,
                stacklevel=3,
            )

    def _read_sizes(self, data: Json) -> dict[Any, tuple[int, int]]:
        """Open the header of every image this split can read: a missing or unreadable file fails
        now, in seconds, rather than in a DataLoader worker hours into a run.

        The training split only reads images with a non-crowd box; the others are dropped anyway.
        """
        annotated = {a["image_id"] for a in data["annotations"] if _usable(a)}
        wanted = [img for img in data["images"] if not self.train or img["id"] in annotated]
        missing, broken, sizes = [], [], {}
        for img in wanted:
            path = self.image_dir / img["file_name"]
            if not path.is_file():
                missing.append(img["file_name"])
                continue
            try:
                sizes[img["id"]] = image_size(path)
            except DataError as exc:
                broken.append(str(exc))
        if missing:
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise DataError(
                f"{self.where}: {len(missing)} of {len(wanted)} images missing "
                f"under {self.image_dir}: {shown}"
            )
        if broken:
            raise unreadable_images_error(broken, self.where)
        return sizes

    def _fix_to_stored_sizes(self, data: Json, stored: Mapping[Any, tuple[int, int]]) -> Json:
        """Clip boxes of images whose file size differs from (or is absent in) the annotation file."""
        recorded = recorded_sizes(data)
        differ = {i: hw for i, hw in stored.items() if recorded.get(i) != hw}
        if not differ:
            return data
        conflicts = [i for i in differ if i in recorded]
        if conflicts:
            first = conflicts[0]
            name = next(img["file_name"] for img in data["images"] if img["id"] == first)
            warnings.warn(
                f"{self.where}: {len(conflicts)} images are stored at another size than the file records "
                f"(e.g. {name}: {differ[first][0]}x{differ[first][1]} stored, "
                f"{recorded[first][0]}x{recorded[first][1]} recorded); their boxes are clipped to the "
                "stored pixels (EXIF orientation is not applied, as officially)",
                DataWarning,
                stacklevel=4,
            )
        return fix_boxes(data, self.ann_file, differ, split=self.split, only=set(differ))

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> Path:
        return self.image_dir / self.coco.imgs[self.ids[index]]["file_name"]

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]]:
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        path = self.image_dir / info["file_name"]
        image = read_image(path)
        hw = (image.height, image.width)
        known = self.stored_sizes is not None  # then a size conflict was reported when the split opened
        if not known and "width" in info and "height" in info and (info["height"], info["width"]) != hw:
            warnings.warn(
                f"{path}: stored size {hw[1]}x{hw[0]} differs from {self.ann_file}'s "
                f"{info['width']}x{info['height']}; "
                "boxes are clipped to the stored pixels (EXIF orientation is not applied, as officially)",
                DataWarning,
                stacklevel=2,
            )
        anns = [a for a in self.coco.imgToAnns[image_id] if _usable(a)]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([self.label_of[a["category_id"]] for a in anns], dtype=torch.int64)
        boxes, keep = clip_boxes(xywh_to_xyxy(boxes), hw)
        target: dict[str, Any] = {
            "boxes": boxes[keep],
            "labels": labels[keep],
            "image_id": int(image_id),
            "orig_size": hw,
            "size": hw,
        }
        if self.transforms is None:
            return F.to_tensor(image), target
        return self.transforms(image, target)

    def __repr__(self) -> str:
        return f"CocoDetection({self.ann_file}, images={len(self)}, train={self.train})"
