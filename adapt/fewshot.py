"""Few-shot splits: the official "at least K images per category" rule, over a seeded order.

The rule (spec 4.5): walk the images in order; keep an image, with all of its boxes, when any of
the categories it contains still needs examples, then count it for every category it contains.
The official in-code sampler walks ascending image ids and ignores its seed, so every seed gives
the same split; the paper's prepared files differ per seed. Here the walk follows a
`random.Random(seed)` shuffle of the ascending ids, so a seed fixes the split and different seeds
give different splits; `seed=None` walks the plain ascending order (the official in-code split).

`python -m adapt.fewshot --ann FILE --shots K --seed S --out FILE` writes such a split for any
COCO file; the output is a COCO file (all categories kept, so label ids never shift).
"""

from __future__ import annotations

import argparse
import random
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adapt.atomic import write_json
from adapt.data.coco import load_coco_json
from adapt.data.errors import DataError, DataWarning

Json = dict[str, Any]


def image_order(image_ids: Sequence[int], seed: int | None) -> list[int]:
    """Ascending ids, shuffled by `random.Random(seed)` unless seed is None (official COCODataset order)."""
    ids = sorted(image_ids)
    if seed is not None:
        random.Random(seed).shuffle(ids)
    return ids


def sample_fewshot(data: Json, shots: int, seed: int | None, source: str = "") -> Json:
    """Return a COCO dict with whole images until every category is in at least `shots` of them.

    Counting is per image, over every annotation of a listed category (crowd included, as
    officially). A category with fewer than `shots` images gets them all and a DataWarning that
    names it, so a short split is visible instead of silently unbalanced.
    """
    if not isinstance(shots, int) or isinstance(shots, bool) or shots < 1:
        raise ValueError(f"shots must be a positive integer, got {shots!r}")
    cat_ids = [c["id"] for c in data["categories"]]
    listed = set(cat_ids)
    cats_of: dict[int, set[int]] = {img["id"]: set() for img in data["images"]}
    for ann in data["annotations"]:
        if ann["category_id"] in listed:
            cats_of[ann["image_id"]].add(ann["category_id"])
    need = dict.fromkeys(cat_ids, shots)
    kept: set[int] = set()
    for image_id in image_order(list(cats_of), seed):
        present = cats_of[image_id]
        if any(need[c] > 0 for c in present):
            kept.add(image_id)
            for c in present:
                need[c] -= 1
        if all(v <= 0 for v in need.values()):
            break
    short = {c: shots - need[c] for c in cat_ids if need[c] > 0}
    if short:
        names = {c["id"]: c["name"] for c in data["categories"]}
        detail = ", ".join(f"{names[c]} ({n} of {shots})" for c, n in short.items())
        warnings.warn(
            f"{source or 'few-shot sampling'}: fewer than {shots} images for {detail}",
            DataWarning,
            stacklevel=2,
        )
    out = {k: v for k, v in data.items() if k not in ("images", "annotations")}
    out["images"] = [img for img in data["images"] if img["id"] in kept]
    out["annotations"] = [a for a in data["annotations"] if a["image_id"] in kept]
    out["info"] = dict(data.get("info") or {}, fewshot={"shots": shots, "seed": seed, "source": source})
    return out


def images_per_category(data: Json) -> dict[int, int]:
    """Number of distinct images containing each category: the quantity the rule bounds."""
    seen: dict[int, set[int]] = {c["id"]: set() for c in data["categories"]}
    for ann in data["annotations"]:
        seen.setdefault(ann["category_id"], set()).add(ann["image_id"])
    return {c: len(s) for c, s in seen.items()}


def write_fewshot(ann_file: str | Path, shots: int, seed: int | None, out: str | Path) -> Path:
    """Sample `ann_file` and write the split atomically; background category 0 is dropped first."""
    data = load_coco_json(ann_file)
    split = sample_fewshot(data, shots, seed, source=str(ann_file))
    return write_json(split, out, indent=None)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m adapt.fewshot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ann", required=True, help="COCO annotation file to sample from")
    parser.add_argument("--shots", required=True, type=int, help="K: images per category (at least)")
    parser.add_argument("--seed", type=int, default=None, help="shuffle seed (omit: ascending image ids)")
    parser.add_argument("--out", required=True, help="output COCO file")
    args = parser.parse_args(argv)
    try:
        path = write_fewshot(args.ann, args.shots, args.seed, args.out)
    except (DataError, ValueError) as exc:
        print(f"adapt.fewshot: error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
