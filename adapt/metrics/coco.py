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
from pathlib import Path
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


def _load_detections(
    detections: Sequence[Mapping[str, Any]] | str | Path,
) -> tuple[list[dict[str, Any]], str]:
    if isinstance(detections, str | Path):
        data = read_json(detections)
        source = str(detections)
        if isinstance(data, dict) and "annotations" in data:
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
    return [dict(d) for d in data], source


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
    dets, source = _load_detections(detections)
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
