"""Phrase-grounding Recall@k on Flickr30k Entities, computed the way MDETR's ``flickr_eval.py`` does.

The protocol (MDETR, Kamath et al. 2021, section 4.1 and ``datasets/flickr_eval.py``; GLIP reports
its Flickr30k numbers with the same evaluator):

* ground truth comes from the raw release (``Annotations/``, ``Sentences/``, the split list), never
  from a pre-processed file; a phrase's boxes are every ``bndbox`` of its chain;
* phrases without a box (``nobndbox``, ``scene`` without a box, "notvisual") are dropped, and so are
  captions left with no phrase;
* a prediction is, per image and caption, one ranked box list per remaining phrase, in caption
  order (:func:`read_predictions`); the list is scored in the order given;
* a phrase is found at k when one of its first k boxes has IoU >= 0.5 with ANY of the phrase's
  ground-truth boxes (``any_box``), or with the union box enclosing all of them (``merged_box``,
  Plummer et al.'s protocol); IoU in the continuous convention (area = w * h, no +1) with both
  boxes as given; ``upper_bound`` is the same over the whole list (MDETR's k = -1);
* Recall@k = found / phrases, overall and per phrase type; a phrase with several types counts in
  each of them.

Two deliberate differences, both where MDETR's evaluator would stop with an exception: an empty box
list is a miss, and a malformed entry is a DataError naming the file, the entry and the key.

`python -m adapt.evaluate grounding --flickr-root DIR --split val|test --results FILE [--json]`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchvision.ops import box_iou

from adapt.atomic import write_json
from adapt.data.errors import DataError, DataWarning
from adapt.data.flickr import PHRASE_TYPES, SPLITS, flickr_samples
from adapt.data.grounding import GroundingSample
from adapt.data.io import read_json
from adapt.data.transforms import resize_boxes

__all__ = [
    "IOU_THRESHOLD",
    "PROTOCOLS",
    "TOPK",
    "GroundTruthPhrase",
    "SentencePrediction",
    "box_list",
    "evaluate_flickr",
    "evaluate_grounding",
    "flickr_prediction",
    "found_at_k",
    "ground_truth",
    "main",
    "read_predictions",
    "recall_at_k",
]

TOPK = (1, 5, 10)
IOU_THRESHOLD = 0.5
PROTOCOLS = ("any_box", "merged_box")
UPPER_BOUND = "upper_bound"


@dataclass(frozen=True)
class GroundTruthPhrase:
    """A scored phrase: its ground-truth boxes [m, 4] (xyxy, continuous) and its phrase types."""

    boxes: Tensor
    types: tuple[str, ...]


@dataclass(frozen=True)
class SentencePrediction:
    """One caption's prediction: per phrase (caption order) a ranked [k, 4] xyxy box list."""

    image_id: str
    sentence_id: int
    boxes: list[Tensor]


GroundTruth = dict[tuple[str, int], list[GroundTruthPhrase]]


def ground_truth(samples: Iterable[GroundingSample], merge_boxes: bool = False) -> GroundTruth:
    """The scored phrases of each (image id, sentence id): phrases with boxes, captions with phrases.

    ``merge_boxes`` replaces each phrase's boxes by the one box enclosing them all (merged-box).
    """
    out: GroundTruth = {}
    for sample in samples:
        phrases = []
        for phrase in sample.eval_phrases:
            boxes = torch.tensor(phrase.boxes, dtype=torch.float64).reshape(-1, 4)
            if merge_boxes:
                boxes = torch.cat([boxes[:, :2].amin(0), boxes[:, 2:].amax(0)])[None]
            phrases.append(GroundTruthPhrase(boxes, phrase.types))
        if phrases:
            out[(sample.image_id, sample.sentence_id)] = phrases
    return out


def found_at_k(overlaps: Tensor, ks: Sequence[int | None], threshold: float) -> list[bool]:
    """Whether any of the first k ranked boxes reaches ``threshold``, for each k (None: all boxes).

    ``overlaps`` is [ranked boxes, ground-truth boxes] (IoU or GIoU); a k beyond the list length
    uses the whole list, and an empty list is found at no k.
    """
    overlaps = torch.nan_to_num(overlaps, nan=0.0)  # two empty boxes: no overlap, not NaN
    best = overlaps.amax(dim=1) if overlaps.shape[1] else overlaps.new_zeros(overlaps.shape[0])
    return [bool((best[:k] >= threshold).any()) for k in ks]


def _entry_where(source: str, index: int) -> str:
    return f"{source}: entry {index}"


def box_list(value: Any, where: str) -> Tensor:
    """A received list of xyxy boxes as a [k, 4] float64 tensor; anything else is a DataError at ``where``."""
    if not isinstance(value, list) or not all(
        isinstance(b, list | tuple)
        and len(b) == 4
        and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in b)
        for b in value
    ):
        raise DataError(f"{where} is not a list of [x1, y1, x2, y2] boxes of finite numbers")
    boxes = torch.tensor(value, dtype=torch.float64).reshape(-1, 4)
    bad = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if bad.any():
        raise DataError(f"{where} has a box with x2 < x1 or y2 < y1: {value[int(bad.nonzero()[0])]}")
    return boxes


def read_predictions(
    predictions: str | Path | Sequence[Mapping[str, Any]], source: str | None = None
) -> list[SentencePrediction]:
    """MDETR's Flickr prediction format: a list of {"image_id", "sentence_id", "boxes"} entries.

    ``boxes`` holds one list per scored phrase of the caption, in caption order, each a ranked list
    of [x1, y1, x2, y2] boxes in the original image's pixels (continuous convention).
    """
    if isinstance(predictions, str | Path):
        source = source or str(predictions)
        predictions = read_json(predictions)
    source = source or "predictions"
    if not isinstance(predictions, list):
        raise DataError(f"{source}: expected a list of {{image_id, sentence_id, boxes}} entries")
    out = []
    for i, entry in enumerate(predictions):
        where = _entry_where(source, i)
        if not isinstance(entry, Mapping) or not {"image_id", "sentence_id", "boxes"} <= entry.keys():
            raise DataError(f"{where} lacks image_id/sentence_id/boxes: {str(entry)[:200]}")
        image_id, sentence_id = entry["image_id"], entry["sentence_id"]
        if isinstance(image_id, bool) or not isinstance(image_id, int | str):
            raise DataError(f"{where}: image_id {image_id!r} is not an id")
        if isinstance(sentence_id, bool) or not isinstance(sentence_id, int):
            raise DataError(f"{where}: sentence_id {sentence_id!r} is not an integer")
        if not isinstance(entry["boxes"], list):
            raise DataError(f"{where}: 'boxes' is not a list with one box list per phrase")
        boxes = [box_list(b, f"{where}, boxes[{j}]") for j, b in enumerate(entry["boxes"])]
        out.append(SentencePrediction(str(image_id), sentence_id, boxes))
    return out


class _Counts:
    """Found / total per (k, category), MDETR's RecallTracker in percent."""

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = list(keys)
        self.found: dict[str, dict[str, int]] = {}
        self.total: dict[str, int] = {}

    def add(self, categories: Iterable[str], found: Sequence[bool]) -> None:
        for category in categories:
            self.total[category] = self.total.get(category, 0) + 1
            row = self.found.setdefault(category, dict.fromkeys(self.keys, 0))
            for key, hit in zip(self.keys, found, strict=True):
                row[key] += int(hit)

    def percent(self, category: str) -> dict[str, float]:
        return {k: round(100.0 * self.found[category][k] / self.total[category], 4) for k in self.keys}


def _warn(source: str, what: str, captions: Sequence[tuple[str, int]], outcome: str) -> None:
    image, sentence = captions[0]
    more = f" and {len(captions) - 1} more" if len(captions) > 1 else ""
    warnings.warn(
        f"{source}: {what} (image {image}, sentence {sentence}{more}); {outcome}", DataWarning, stacklevel=3
    )


def _type_order(types: Iterable[str]) -> list[str]:
    """The paper's column order, then any other type the files use, alphabetically."""
    seen = set(types)
    return [t for t in PHRASE_TYPES if t in seen] + sorted(seen - set(PHRASE_TYPES))


def recall_at_k(
    truth: GroundTruth,
    predictions: Sequence[SentencePrediction],
    ks: Sequence[int] = TOPK,
    iou_threshold: float = IOU_THRESHOLD,
    source: str = "predictions",
) -> dict[str, Any]:
    """Recall@k (percent) overall and per phrase type; see the module docstring for the rules.

    Returns {"R@1": .., "R@5": .., "R@10": .., "upper_bound": .., "per_type": {type: {...}}}. A
    second prediction for a caption is ignored with a warning (MDETR keeps the first), one for a
    caption without scored phrases is ignored (warned when it has boxes), a missing caption or a
    wrong number of box lists is a DataError.
    """
    keys = [f"R@{k}" for k in ks] + [UPPER_BOUND]
    limits: list[int | None] = [*ks, None]
    counts = _Counts(keys)
    seen: set[tuple[str, int]] = set()
    duplicates, unexpected = [], []
    for i, pred in enumerate(predictions):
        key = (pred.image_id, pred.sentence_id)
        if key in seen:
            duplicates.append(key)
            continue
        if key not in truth:
            if any(len(b) for b in pred.boxes):
                unexpected.append(key)
            continue
        seen.add(key)
        phrases = truth[key]
        if len(pred.boxes) != len(phrases):
            raise DataError(
                f"{_entry_where(source, i)} (image {pred.image_id}, sentence {pred.sentence_id}) has "
                f"{len(pred.boxes)} box lists but the caption has {len(phrases)} phrases with boxes"
            )
        for ranked, phrase in zip(pred.boxes, phrases, strict=True):
            found = found_at_k(box_iou(ranked, phrase.boxes), limits, iou_threshold)
            counts.add(["all", *phrase.types], found)
    if duplicates:
        _warn(source, "captions predicted twice", duplicates, "second predictions ignored")
    if unexpected:
        _warn(source, "captions without phrases to score", unexpected, "ignored")
    missing = sorted(set(truth) - seen)
    if missing:
        image, sentence = missing[0]
        raise DataError(
            f"{source}: no prediction for {len(missing)} of {len(truth)} captions "
            f"(e.g. image {image}, sentence {sentence})"
        )
    if "all" not in counts.total:
        raise DataError(f"{source}: there is no phrase with a box to score")
    result: dict[str, Any] = counts.percent("all")
    result["per_type"] = {t: counts.percent(t) for t in _type_order(set(counts.total) - {"all"})}
    result["phrases"] = counts.total["all"]
    return result


def evaluate_flickr(
    samples: Sequence[GroundingSample],
    predictions: str | Path | Sequence[Mapping[str, Any]],
    ks: Sequence[int] = TOPK,
    iou_threshold: float = IOU_THRESHOLD,
    source: str | None = None,
) -> dict[str, Any]:
    """Any-box and merged-box Recall@k of one set of predictions against ``samples``' phrases.

    Returns {"any_box": {"R@1", ...}, "merged_box": {...}, "per_type": {"any_box": {type: {...}},
    "merged_box": {...}}, "phrases": n, "sentences": n, "iou_threshold": t}, recalls in percent.
    """
    if source is None:
        source = str(predictions) if isinstance(predictions, str | Path) else "predictions"
    preds = read_predictions(predictions, source)
    result: dict[str, Any] = {"per_type": {}}
    for protocol in PROTOCOLS:
        truth = ground_truth(samples, merge_boxes=protocol == "merged_box")
        with warnings.catch_warnings():
            if protocol != PROTOCOLS[0]:  # the same file: warn once
                warnings.simplefilter("ignore", DataWarning)
            scores = recall_at_k(truth, preds, ks, iou_threshold, source)
        result["per_type"][protocol] = scores.pop("per_type")
        result["phrases"] = scores.pop("phrases")
        result["sentences"] = len(truth)
        result[protocol] = scores
    result["iou_threshold"] = iou_threshold
    return result


def evaluate_grounding(
    flickr_root: str | Path,
    split: str,
    results: str | Path | Sequence[Mapping[str, Any]],
    ks: Sequence[int] = TOPK,
    iou_threshold: float = IOU_THRESHOLD,
) -> dict[str, Any]:
    """:func:`evaluate_flickr` against the raw Flickr30k Entities files of ``split`` under ``flickr_root``."""
    result = evaluate_flickr(flickr_samples(flickr_root, split), results, ks, iou_threshold)
    result["split"] = split
    return result


def flickr_prediction(
    image_id: str | int,
    sentence_id: int,
    ranked_boxes: Sequence[Tensor],
    size: tuple[int, int],
    orig_size: tuple[int, int],
) -> dict[str, Any]:
    """A results entry from ranked boxes in network-input pixels (xyxy, GLIP's +1 convention).

    Boxes are scaled back to the original (h, w) as the detection results are (official
    ``BoxList.resize``) and written in the continuous convention (x2 + 1, y2 + 1), the one the
    annotation files and this metric use, so that GLIP's training targets (x2 = xmax - 1) written
    back score IoU 1.
    """
    lists = []
    old_hw, new_hw = (int(size[0]), int(size[1])), (int(orig_size[0]), int(orig_size[1]))
    for boxes in ranked_boxes:
        scaled = resize_boxes(boxes.detach().float().cpu().reshape(-1, 4), old_hw, new_hw)
        scaled = scaled + scaled.new_tensor([0.0, 0.0, 1.0, 1.0])
        lists.append([[round(float(v), 3) for v in box] for box in scaled.tolist()])
    return {"image_id": str(image_id), "sentence_id": int(sentence_id), "boxes": lists}


def _print_report(result: Mapping[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for protocol in PROTOCOLS:
        table = Table(title=f"Flickr30k Entities {result.get('split', '')} {protocol} recall (%)")
        keys = list(result[protocol])
        table.add_column("phrase type")
        for key in keys:
            table.add_column(key, justify="right")
        table.add_row("all", *(f"{result[protocol][k]:.2f}" for k in keys))
        for name, row in result["per_type"][protocol].items():
            table.add_row(name, *(f"{row[k]:.2f}" for k in keys))
        console.print(table)
    console.print(f"{result['phrases']} phrases in {result['sentences']} captions")


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m adapt.evaluate grounding ...`; see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="python -m adapt.evaluate grounding",
        description="Flickr30k Entities phrase-grounding Recall@1/5/10 (any-box and merged-box), "
        "as MDETR computes it.",
    )
    parser.add_argument(
        "--flickr-root", required=True, help="Flickr30k Entities folder (Annotations/, Sentences/, splits)"
    )
    parser.add_argument("--split", required=True, choices=[s for s in SPLITS if s != "train"])
    parser.add_argument("--results", required=True, help="predictions: MDETR's Flickr format (json list)")
    parser.add_argument("--iou", type=float, default=IOU_THRESHOLD, help="IoU threshold (default 0.5)")
    parser.add_argument("--out", help="also write the metrics as json here")
    parser.add_argument("--json", action="store_true", help="print the metrics as json instead of tables")
    args = parser.parse_args(argv)
    try:
        result = evaluate_grounding(args.flickr_root, args.split, args.results, iou_threshold=args.iou)
    except DataError as exc:
        print(f"adapt.evaluate grounding: error: {exc}", file=sys.stderr)
        return 2
    if args.out:
        write_json(result, args.out, indent=2)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_report(result)
    return 0
