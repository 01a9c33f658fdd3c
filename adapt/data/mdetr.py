"""MDETR's pre-processed COCO-style grounding files read into grounding samples.

MDETR (Kamath et al. 2021) ships its grounding data as COCO-like json (``mdetr_annotations.tar.gz``,
zenodo record 4729015), which GLIP's grounding configs read too. Facts checked against MDETR's
``datasets/coco.py`` (``ModulatedDetection``), ``scripts/pre-training/flickr_combined.py`` and
``scripts/fine-tuning/refexp_coco_format.py``:

* one ``images`` entry per (image, caption): ``id``, ``file_name``, ``caption``, and optionally
  ``height``/``width`` (strings in the Flickr files), ``dataset_name`` ("flickr", "refcoco", ...),
  ``sentence_id`` and ``original_img_id`` (Flickr: the caption's index and the Flickr image id that
  predictions are keyed by), ``original_id`` (RefCOCO: the COCO image id), ``tokens_negative``;
* ``tokens_positive_eval`` (Flickr files): one list of ``[start, end)`` character spans per
  evaluated phrase, in caption order, only for phrases with boxes;
* ``annotations``: COCO ``bbox`` (x, y, w, h, continuous) and ``tokens_positive``, the spans of
  every phrase naming the box; crowd boxes and boxes with no width or height are dropped (as MDETR's
  ``ConvertCocoPolysToMask`` does).

Without ``tokens_positive_eval`` (RefCOCO/+/g, the mixed pre-training files) the phrases are the
distinct span sets of the annotations, so a referring expression is one phrase with its one box.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

from adapt.data.errors import DataError, DataWarning
from adapt.data.grounding import Box, GroundingSample, Phrase, Span
from adapt.data.io import read_json

__all__ = ["ANNOTATIONS_HELP", "COCO_IMAGES_HELP", "mdetr_samples", "read_mdetr"]

ANNOTATIONS_HELP = (
    "MDETR's pre-processed annotations are mdetr_annotations.tar.gz (zenodo.org/record/4729015); "
    "unpack it and point the task at its json files"
)
COCO_IMAGES_HELP = (
    "RefCOCO, RefCOCO+ and RefCOCOg use the COCO 2014 train images "
    "(images.cocodataset.org/zips/train2014.zip, "
    "under the COCO terms of use); set the image folder to the unpacked train2014/"
)

Json = dict[str, Any]


def read_mdetr(path: str | Path) -> Json:
    """Read and check an MDETR-format file; every malformed entry is one DataError naming the key."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{path}: expected a COCO-style object with an 'images' list")
    annotations = data.get("annotations", [])
    if not isinstance(annotations, list):
        raise DataError(f"{path}: 'annotations' is not a list")
    captions: dict[Any, str] = {}
    for i, image in enumerate(data["images"]):
        where = f"{path}: images[{i}]"
        if not isinstance(image, dict) or not {"id", "file_name", "caption"} <= image.keys():
            raise DataError(f"{where} lacks id/file_name/caption: {str(image)[:200]}")
        if not isinstance(image["caption"], str) or not isinstance(image["file_name"], str):
            raise DataError(f"{where}: 'caption' and 'file_name' must be strings")
        if image["id"] in captions:
            raise DataError(f"{where}: duplicate image id {image['id']!r}")
        captions[image["id"]] = image["caption"]
        if "tokens_positive_eval" in image:
            spans = image["tokens_positive_eval"]
            if not isinstance(spans, list):
                raise DataError(f"{where}: 'tokens_positive_eval' is not a list of span lists")
            for j, phrase in enumerate(spans):
                _check_spans(phrase, image["caption"], f"{where}['tokens_positive_eval'][{j}]")
        for key in ("sentence_id", "width", "height"):
            if key in image and _as_int(image[key]) is None:
                raise DataError(f"{where}: '{key}' is {image[key]!r}, not an integer")
    for i, ann in enumerate(annotations):
        where = f"{path}: annotations[{i}]"
        if not isinstance(ann, dict) or not {"image_id", "bbox", "tokens_positive"} <= ann.keys():
            raise DataError(f"{where} lacks image_id/bbox/tokens_positive: {str(ann)[:200]}")
        if ann["image_id"] not in captions:
            raise DataError(f"{where} refers to unknown image id {ann['image_id']!r}")
        box = ann["bbox"]
        if not isinstance(box, list) or len(box) != 4 or not all(_finite(v) for v in box):
            raise DataError(f"{where} has an invalid bbox {box!r} (need 4 finite numbers)")
        _check_spans(ann["tokens_positive"], captions[ann["image_id"]], f"{where}['tokens_positive']")
    return data


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _as_int(value: Any) -> int | None:
    """An int, or a string of one (MDETR's Flickr files store sizes as xmltodict strings)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _check_spans(spans: Any, caption: str, where: str) -> None:
    if not isinstance(spans, list):
        raise DataError(f"{where} is not a list of [start, end] spans")
    for span in spans:
        if (
            not isinstance(span, list | tuple)
            or len(span) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in span)
            or not 0 <= span[0] < span[1] <= len(caption)
        ):
            raise DataError(
                f"{where} has span {span!r}, not [start, end) inside the {len(caption)}-character caption"
            )


def mdetr_samples(path: str | Path) -> list[GroundingSample]:
    """Every caption entry of an MDETR-format file, in file order (see the module docstring)."""
    path = Path(path)
    data = read_mdetr(path)
    by_image: dict[Any, list[Json]] = defaultdict(list)
    dropped = 0
    for ann in data.get("annotations", []):
        _x, _y, w, h = ann["bbox"]
        if ann.get("iscrowd", 0) or w <= 0 or h <= 0:
            dropped += 1
            continue
        by_image[ann["image_id"]].append(ann)
    if dropped:
        warnings.warn(
            f"{path}: dropped {dropped} crowd boxes or boxes without width or height, as MDETR's loader does",
            DataWarning,
            stacklevel=2,
        )
    return [_sample(image, by_image[image["id"]]) for image in data["images"]]


def _spans(raw: list[list[int]]) -> tuple[Span, ...]:
    return tuple(sorted({(int(a), int(b)) for a, b in raw}))


def _sample(image: Json, anns: list[Json]) -> GroundingSample:
    caption = image["caption"]
    boxes: list[Box] = []
    box_spans: list[tuple[Span, ...]] = []
    for ann in anns:
        x, y, w, h = (float(v) for v in ann["bbox"])
        boxes.append((x, y, x + w, y + h))
        box_spans.append(_spans(ann["tokens_positive"]))
    if "tokens_positive_eval" in image:
        phrase_spans = [_spans(p) for p in image["tokens_positive_eval"]]
    else:
        phrase_spans = list(dict.fromkeys(s for s in box_spans if s))
    phrases = []
    for k, spans in enumerate(phrase_spans):
        named = tuple(box for box, names in zip(boxes, box_spans, strict=True) if set(names) & set(spans))
        text = " ".join(caption[a:b] for a, b in spans)
        phrases.append(Phrase(text, spans, str(k), (), named))
    width, height = _as_int(image.get("width")), _as_int(image.get("height"))
    original = image.get("original_img_id")
    return GroundingSample(
        image_id=str(original if original is not None else image["id"]),
        sentence_id=_as_int(image.get("sentence_id")) or 0,
        file_name=image["file_name"],
        caption=caption,
        phrases=tuple(phrases),
        boxes=tuple(boxes),
        box_spans=tuple(box_spans),
        size=(width, height) if width and height else None,
        entry_id=image["id"],
        dataset=image.get("dataset_name"),
    )
