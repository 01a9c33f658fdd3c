"""`python -m adapt.evaluate`: score a detection results file against COCO ground truth.

`python -m adapt.evaluate --gt FILE --dt FILE [--max-dets N] [--json] [--out FILE]` prints AP@[.5:.95],
AP50, AP75, the size breakdown and per-category AP in percent (adapt.metrics.coco, COCOeval).
A detection file listing its images (``adapt.predict``'s ``detections.json``, ids 1..N in its input
order) is matched to the ground truth by file name; one whose images cannot all be matched is refused.
`python -m adapt.evaluate grounding|refexp ...` scores phrase grounding (Flickr30k Entities
Recall@k) and referring expressions (precision@k), adapt.metrics.grounding / refexp.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from adapt.atomic import write_json
from adapt.data.errors import DataError
from adapt.metrics.coco import STAT_NAMES, evaluate


def _print_report(result: Mapping[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    table = Table(title=f"COCO box AP (%), max {result['max_dets']} detections per image")
    for name in STAT_NAMES:
        table.add_column(name)
    table.add_row(*(fmt(result[n]) for n in STAT_NAMES))
    per_cat = Table(title="per-category AP (%)")
    per_cat.add_column("category")
    per_cat.add_column("AP", justify="right")
    for name, ap in result["per_category"].items():
        per_cat.add_row(name, fmt(ap))
    console = Console()
    console.print(table)
    console.print(per_cat)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; see the module docstring. `grounding` / `refexp` first: those metrics' CLIs."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["grounding"]:
        from adapt.metrics import grounding

        return grounding.main(args_list[1:])
    if args_list[:1] == ["refexp"]:
        from adapt.metrics import refexp

        return refexp.main(args_list[1:])
    parser = argparse.ArgumentParser(prog="python -m adapt.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--gt", required=True, help="ground-truth COCO annotation file")
    parser.add_argument(
        "--dt",
        required=True,
        help="detections: a COCO results list (image ids of --gt), or a COCO file with images "
        "(adapt.predict's detections.json), whose images are matched to --gt's by file name",
    )
    parser.add_argument("--max-dets", type=int, default=100, help="detections per image (default 100)")
    parser.add_argument("--out", help="also write the metrics as json here")
    parser.add_argument("--json", action="store_true", help="print the metrics as json instead of tables")
    args = parser.parse_args(argv)
    try:
        result = evaluate(args.gt, args.dt, max_dets=args.max_dets)
    except DataError as exc:
        print(f"adapt.evaluate: error: {exc}", file=sys.stderr)
        return 2
    metrics = {k: v for k, v in result.items() if k != "summary"}
    if args.out:
        write_json(metrics, args.out, indent=2)
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        _print_report(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
