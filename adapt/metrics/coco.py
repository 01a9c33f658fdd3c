"""COCO box AP with pycocotools, the paper's metric (spec 4.6), in percent.

`evaluate(gt, detections)` runs `COCOeval(iouType="bbox")` and returns AP@[.5:.95], AP50, AP75,
the size breakdown and per-category AP, all x100 as in the paper; pycocotools' prints are captured
and returned as `summary`. `detections_to_coco` turns model outputs into COCO results the way the
official evaluator does: boxes back to the original image size, xywh with the +1 convention
(w = x2 - x1 + 1), contiguous labels back to json category ids.

`python -m adapt.evaluate --gt FILE --dt FILE [--max-dets N]` evaluates a results file.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PureWindowsPath
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from adapt.data.coco import coco_from_dict, load_coco_json
from adapt.data.errors import DataError, DataWarning
from adapt.data.io import read_json
from adapt.data.transforms import resize_boxes

# Indices of COCOeval.stats and the names results.json uses for them.
STAT_NAMES = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")


def _percent(value: float) -> float | None:
    """pycocotools marks "no ground truth" with -1; keep that as None rather than a fake 0."""
    return None if value < 0 else round(float(value) * 100.0, 4)


def _mean_precision(values: np.ndarray) -> float | None:
    """COCOeval's summary: the mean over entries that exist (-1 marks "no ground truth")."""
    valid = values[values > -1]
    return _percent(float(np.mean(valid))) if valid.size else None


def coco_xywh(boxes: torch.Tensor) -> torch.Tensor:
    """xyxy -> COCO xywh with GLIP's +1 convention (w = x2 - x1 + 1), as official evaluation writes it."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([x1, y1, x2 - x1 + 1, y2 - y1 + 1], dim=-1)


def detections_to_coco(
    predictions: Iterable[Mapping[str, torch.Tensor]],
    targets: Iterable[Mapping[str, Any]],
    category_ids: Sequence[int],
) -> list[dict[str, Any]]:
    """COCO results from per-image predictions (network-input pixels, xyxy, 1-based labels).

    `targets` are the dataset's targets of the same images (image_id, size = network input (h, w),
    orig_size = original (H, W)). Scaling is the official BoxList.resize: plain per-axis ratios.
    """
    results = []
    for pred, target in zip(predictions, targets, strict=True):
        boxes = pred["boxes"].detach().float().cpu()
        if boxes.numel() == 0:
            continue
        boxes = resize_boxes(boxes, tuple(target["size"]), tuple(target["orig_size"]))
        for box, score, label in zip(
            coco_xywh(boxes).tolist(),
            pred["scores"].detach().cpu().tolist(),
            pred["labels"].detach().cpu().tolist(),
            strict=True,
        ):
            results.append(
                {
                    "image_id": int(target["image_id"]),
                    "category_id": int(category_ids[int(label) - 1]),
                    "bbox": [round(v, 3) for v in box],
                    "score": float(score),
                }
            )
    return results


def _trailing_parts(name: str) -> tuple[str, ...]:
    """A file name's path components, last first, separators of either system."""
    return tuple(reversed(PureWindowsPath(name).as_posix().split("/")))


def _common_tail(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def match_images(images: Sequence[Mapping[str, Any]], gt: COCO, source: str) -> dict[Any, int]:
    """Map a detection file's image ids to the ground truth's, by file name.

    ``adapt.predict`` numbers its inputs 1..N in command-line order: those ids say nothing about the
    ground truth's, which may be 1..N in another order. Each image is matched to the ground-truth
    image with the same base name, and where several share it, the one sharing the most trailing
    path components (``images/val/a.png`` against ``val/a.png``). An image with no match, with
    several equally good ones, or whose match is another image's, raises a DataError in one sentence.
    """
    by_name: dict[str, list[tuple[tuple[str, ...], int]]] = {}
    for img in gt.dataset.get("images", []):
        parts = _trailing_parts(str(img.get("file_name", "")))
        by_name.setdefault(parts[0], []).append((parts, int(img["id"])))
    mapping: dict[Any, int] = {}
    unmatched: list[str] = []
    ambiguous: list[str] = []
    owner: dict[int, str] = {}
    for img in images:
        name = img.get("file_name") if isinstance(img, Mapping) else None
        if not isinstance(name, str) or not name or "id" not in img:
            raise DataError(f"{source}: image entry {str(img)[:200]} lacks an id or a file_name to match by")
        parts = _trailing_parts(name)
        candidates = by_name.get(parts[0], [])
        if not candidates:
            unmatched.append(name)
            continue
        scores = [_common_tail(parts, c) for c, _ in candidates]
        best = [gid for (_, gid), sc in zip(candidates, scores, strict=True) if sc == max(scores)]
        if len(best) > 1:
            ambiguous.append(name)
            continue
        if best[0] in owner:
            raise DataError(
                f"{source}: images {owner[best[0]]!r} and {name!r} both match ground-truth image "
                f"{gt.imgs[best[0]].get('file_name')!r} (id {best[0]}) by file name, so their "
                "detections cannot be told apart: give the inputs distinct file names"
            )
        owner[best[0]] = name
        mapping[img["id"]] = best[0]
    if unmatched or ambiguous:
        what = []
        if unmatched:
            what.append(
                f"{len(unmatched)} have no image of that name in the ground truth (e.g. {unmatched[0]!r})"
            )
        if ambiguous:
            what.append(f"{len(ambiguous)} match several ground-truth images equally (e.g. {ambiguous[0]!r})")
        raise DataError(
            f"{source}: {len(unmatched) + len(ambiguous)} of its {len(images)} images cannot be matched to "
            f"the ground truth by file name ({'; '.join(what)}), and its image ids number its own inputs, "
            "so its AP would be meaningless: predict on the ground truth's own images (their file names)"
        )
    return mapping


def _match_categories(categories: Any, gt: COCO) -> dict[int, int] | None:
    """Category ids by name where every category of the file names a ground-truth one, else None
    (the ids are taken as they are: an export's prompt names may be renamed from the file's)."""
    if not isinstance(categories, list) or not categories:
        return None
    gt_ids = {str(c.get("name")): int(c["id"]) for c in gt.dataset.get("categories", [])}
    try:
        names = {int(c["id"]): str(c["name"]) for c in categories}
    except (KeyError, TypeError, ValueError):
        return None
    if not all(n in gt_ids for n in names.values()):
        return None
    return {cid: gt_ids[n] for cid, n in names.items()}


def _load_detections(
    detections: Sequence[Mapping[str, Any]] | str | Path,
    gt: COCO | None = None,
) -> tuple[list[dict[str, Any]], str]:
    """The results list. A COCO *file* with ``images`` (``adapt.predict``'s ``detections.json``) has
    its image ids mapped to ``gt``'s by file name, and its category ids by name where all match."""
    images: list[Any] | None = None
    categories: Any = None
    if isinstance(detections, str | Path):
        data = read_json(detections)
        source = str(detections)
        if isinstance(data, dict) and "annotations" in data:
            images, categories = data.get("images"), data.get("categories")
            data = data["annotations"]
    else:
        data, source = detections, "detections"
    if not isinstance(data, list):
        raise DataError(f"{source}: expected a list of COCO results (image_id, category_id, bbox, score)")
    for i, det in enumerate(data):
        if not isinstance(det, Mapping) or not {"image_id", "category_id", "bbox", "score"} <= det.keys():
            raise DataError(f"{source}: result {i} lacks image_id/category_id/bbox/score: {str(det)[:200]}")
        if not isinstance(det["bbox"], list | tuple) or len(det["bbox"]) != 4:
            raise DataError(f"{source}: result {i} has an invalid bbox {det['bbox']!r}")
    dets = [dict(d) for d in data]
    if gt is not None and isinstance(images, list):
        ids = match_images(images, gt, source)
        orphans = sorted({str(d["image_id"]) for d in dets} - {str(k) for k in ids})
        if orphans:
            raise DataError(f"{source}: results for image ids its images list does not have: {orphans[:10]}")
        as_listed = {str(k): v for k, v in ids.items()}
        cats = _match_categories(categories, gt)
        for d in dets:
            d["image_id"] = as_listed[str(d["image_id"])]
            if cats is not None and d["category_id"] in cats:
                d["category_id"] = cats[d["category_id"]]
    return dets, source


def _detections_coco(gt: COCO, dets: list[dict[str, Any]], source: str) -> COCO:
    """Results as a COCO object; like `COCO.loadRes` (area from w*h) but also valid when empty."""
    unknown = sorted({d["image_id"] for d in dets} - set(gt.getImgIds()))
    if unknown:
        raise DataError(f"{source}: results for image ids not in the ground truth: {unknown[:10]}")
    foreign = sorted({d["category_id"] for d in dets} - set(gt.getCatIds()))
    if foreign:
        warnings.warn(
            f"{source}: category ids {foreign} are not in the ground truth; ignored",
            DataWarning,
            stacklevel=3,
        )
    anns = []
    for i, d in enumerate(dets):
        x, y, w, h = (float(v) for v in d["bbox"])
        anns.append(dict(d, bbox=[x, y, w, h], area=w * h, id=i + 1, iscrowd=0))
    return coco_from_dict(
        {"images": gt.dataset["images"], "categories": gt.dataset["categories"], "annotations": anns}
    )


def evaluate(
    gt: COCO | str | Path,
    detections: Sequence[Mapping[str, Any]] | str | Path,
    max_dets: int = 100,
) -> dict[str, Any]:
    """AP (percent) of `detections` against `gt`; `max_dets` raises the 100-per-image cap for dense scenes.

    Returns {"ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "per_category": {name: ap},
    "max_dets", "num_detections", "summary"}; an AP is None where pycocotools reports -1 (no
    ground truth of that kind).
    """
    if not isinstance(gt, COCO):
        gt = coco_from_dict(load_coco_json(gt))
    dets, source = _load_detections(detections, gt)
    coco_dt = _detections_coco(gt, dets, source)
    evaluator = COCOeval(gt, coco_dt, iouType="bbox")
    evaluator.params.maxDets = [1, 10, max_dets]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # precision: [IoU thresholds, recall points, categories, area ranges (all, S, M, L), max-dets].
    # Summaries are read from it at the last max-dets setting: COCOeval.stats does the same for 100
    # detections but hard-codes 100 for AP@[.5:.95], so it reports -1 for any other cap.
    precision = evaluator.eval["precision"]
    iou = evaluator.params.iouThrs
    at50, at75 = int(np.argmin(np.abs(iou - 0.5))), int(np.argmin(np.abs(iou - 0.75)))
    result: dict[str, Any] = {
        "ap": _mean_precision(precision[:, :, :, 0, -1]),
        "ap50": _mean_precision(precision[at50, :, :, 0, -1]),
        "ap75": _mean_precision(precision[at75, :, :, 0, -1]),
        "ap_small": _mean_precision(precision[:, :, :, 1, -1]),
        "ap_medium": _mean_precision(precision[:, :, :, 2, -1]),
        "ap_large": _mean_precision(precision[:, :, :, 3, -1]),
    }
    per_category = {
        gt.cats[cat_id]["name"]: _mean_precision(precision[:, :, k, 0, -1])
        for k, cat_id in enumerate(evaluator.params.catIds)
    }
    result.update(
        per_category=per_category, max_dets=max_dets, num_detections=len(dets), summary=out.getvalue()
    )
    return result
