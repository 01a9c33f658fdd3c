"""Referring-expression precision@k (RefCOCO, RefCOCO+, RefCOCOg) as MDETR's ``RefExpEvaluator`` computes it.

A referring expression is a caption whose one phrase names one box, so it is scored with the same
pieces as phrase grounding (`adapt.metrics.grounding.found_at_k` on a ranked box list); only the
ground truth (MDETR's ``finetune_<dataset>_<split>.json``, one annotation per entry), the prediction
keys and the overlap measure differ. Facts from MDETR's ``datasets/refexp.py``:

* every entry of the annotation file is scored, and each must have exactly one box;
* a prediction is boxes with scores, ranked by score, highest first; ties go to the larger box
  coordinates (MDETR sorts (score, box) pairs in reverse);
* an expression is found at k when one of the first k boxes reaches **GIoU** >= 0.5 with the
  ground-truth box (COCO xywh -> xyxy as x + w, no +1). MDETR's paper says IoU; its code computes
  ``generalized_box_iou``, which is never above IoU, so the code's criterion is the stricter one.
  ``criterion="giou"`` (the default) reproduces the code, ``"iou"`` the paper's wording;
* precision@k per ``dataset_name`` (one file holds one dataset and split).

`python -m adapt.evaluate refexp --annotations FILE --results FILE [--json]`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchvision.ops import box_iou, generalized_box_iou

from adapt.atomic import write_json
from adapt.data.errors import DataError
from adapt.data.grounding import GroundingSample
from adapt.data.io import read_json
from adapt.data.mdetr import mdetr_samples
from adapt.metrics.grounding import TOPK, box_list, found_at_k

__all__ = ["CRITERIA", "main", "precision_at_k", "rank_by_score", "read_refexp_predictions"]

CRITERIA = ("giou", "iou")
THRESHOLD = 0.5


def rank_by_score(boxes: Tensor, scores: Tensor) -> Tensor:
    """Boxes in MDETR's order: score descending, equal scores by box coordinates descending."""
    pairs = sorted(zip(scores.tolist(), boxes.tolist(), strict=True), reverse=True)
    return torch.tensor([box for _, box in pairs], dtype=torch.float64).reshape(-1, 4)


def read_refexp_predictions(
    predictions: str | Path | Sequence[Mapping[str, Any]], source: str | None = None
) -> dict[str, Tensor]:
    """{entry id: ranked boxes [k, 4]} from a list of {"image_id", "boxes"[, "scores"]} entries.

    ``image_id`` is the id of the annotation file's entry (one per expression, as MDETR keys its
    predictions); with ``scores`` the boxes are ranked by :func:`rank_by_score`, without them the
    list is taken as ranked. Boxes are xyxy in the original image's pixels (continuous convention).
    """
    if isinstance(predictions, str | Path):
        source = source or str(predictions)
        predictions = read_json(predictions)
    source = source or "predictions"
    if not isinstance(predictions, list):
        raise DataError(f"{source}: expected a list of {{image_id, boxes, scores}} entries")
    out: dict[str, Tensor] = {}
    for i, entry in enumerate(predictions):
        where = f"{source}: entry {i}"
        if not isinstance(entry, Mapping) or not {"image_id", "boxes"} <= entry.keys():
            raise DataError(f"{where} lacks image_id/boxes: {str(entry)[:200]}")
        key = str(entry["image_id"])
        if key in out:
            raise DataError(f"{where}: a second prediction for image_id {entry['image_id']!r}")
        boxes = box_list(entry["boxes"], f"{where}, boxes")
        if "scores" in entry:
            scores = entry["scores"]
            if (
                not isinstance(scores, list)
                or len(scores) != len(boxes)
                or not all(isinstance(s, int | float) and not isinstance(s, bool) for s in scores)
            ):
                raise DataError(f"{where}: 'scores' is not a list of {len(boxes)} numbers, one per box")
            boxes = rank_by_score(boxes, torch.tensor(scores, dtype=torch.float64))
        out[key] = boxes
    return out


def precision_at_k(
    samples: Sequence[GroundingSample],
    predictions: str | Path | Sequence[Mapping[str, Any]] | Mapping[str, Tensor],
    ks: Sequence[int] = TOPK,
    criterion: str = "giou",
    threshold: float = THRESHOLD,
    source: str = "predictions",
) -> dict[str, Any]:
    """Precision@k (percent) over every expression, and per dataset; see the module docstring."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    overlap = generalized_box_iou if criterion == "giou" else box_iou
    if not isinstance(predictions, Mapping):
        source = str(predictions) if isinstance(predictions, str | Path) else source
        predictions = read_refexp_predictions(predictions, source)
    keys = [f"P@{k}" for k in ks]
    found: dict[str, list[int]] = {}
    total: dict[str, int] = {}
    missing = []
    for sample in samples:
        if len(sample.boxes) != 1:
            raise DataError(
                f"entry {sample.entry_id!r} has {len(sample.boxes)} boxes; "
                "a referring expression names exactly one"
            )
        ranked = predictions.get(str(sample.entry_id))
        if ranked is None:
            missing.append(sample.entry_id)
            continue
        truth = torch.tensor(sample.boxes, dtype=torch.float64)
        hits = found_at_k(overlap(ranked.to(torch.float64), truth), ks, threshold)
        for name in ("all", sample.dataset or "unnamed"):
            total[name] = total.get(name, 0) + 1
            row = found.setdefault(name, [0] * len(ks))
            for j, hit in enumerate(hits):
                row[j] += int(hit)
    if missing:
        raise DataError(
            f"{source}: no prediction for {len(missing)} of {len(samples)} expressions (e.g. {missing[0]!r})"
        )
    if not total:
        raise DataError(f"{source}: there is no expression to score")

    def percent(name: str) -> dict[str, float]:
        return {key: round(100.0 * n / total[name], 4) for key, n in zip(keys, found[name], strict=True)}

    result: dict[str, Any] = percent("all")
    result["per_dataset"] = {name: percent(name) for name in sorted(total) if name != "all"}
    result.update(expressions=total["all"], criterion=criterion, threshold=threshold)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m adapt.evaluate refexp ...`; see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="python -m adapt.evaluate refexp",
        description="RefCOCO/RefCOCO+/RefCOCOg precision@1/5/10, as MDETR's RefExpEvaluator computes it.",
    )
    parser.add_argument("--annotations", required=True, help="MDETR's finetune_<dataset>_<split>.json")
    parser.add_argument(
        "--results", required=True, help="predictions: json list of {image_id, boxes, scores}"
    )
    parser.add_argument(
        "--criterion", choices=CRITERIA, default="giou", help="giou (MDETR's code, default) or iou"
    )
    parser.add_argument("--out", help="also write the metrics as json here")
    parser.add_argument("--json", action="store_true", help="print the metrics as json")
    args = parser.parse_args(argv)
    try:
        result = precision_at_k(mdetr_samples(args.annotations), args.results, criterion=args.criterion)
    except DataError as exc:
        print(f"adapt.evaluate refexp: error: {exc}", file=sys.stderr)
        return 2
    if args.out:
        write_json(result, args.out, indent=2)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        keys = [k for k in result if k.startswith("P@")]
        print(f"{'dataset':<12}" + "".join(f"{k:>9}" for k in keys))
        for name, row in [("all", result), *result["per_dataset"].items()]:
            print(f"{name:<12}" + "".join(f"{row[k]:9.2f}" for k in keys))
        print(f"{result['expressions']} expressions, {result['criterion']} >= {result['threshold']}")
    return 0
