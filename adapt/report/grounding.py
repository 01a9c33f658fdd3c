"""The report's phrase-grounding section: measured recalls beside the published numbers.

A grounding run (results.json ``task_type: grounding``, `adapt.runs.grounding`) has no AP, so it
takes no part in the detection tables and averages; it gets a table of its own: per model, task,
mode and shots, the test split's Recall@1/5/10 (Flickr30k Entities, any-box, with merged-box R@1)
or precision@1/5/10 (RefCOCO/+/g), mean ± std over seeds, beside the published figure of the
same model (its config's ``paper`` name) on the same dataset and split.

The published figures are those docs/grounding.md sources, each with its source; a cell the
source does not give is "-", never a remembered number.
"""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from adapt.grid import mode_sort_key, shots_sort_key
from adapt.markdown import md_table
from adapt.report.jobs import COMPLETE, Job, is_grounding

__all__ = ["PUBLISHED", "Published", "grounding_lines", "published", "run_split"]


@dataclass(frozen=True)
class Published:
    """A published result: @1/@5/@10 (recall or precision, percent) of a model on a dataset split."""

    model: str
    dataset: str  # the task config's `name`
    split: str
    values: tuple[float | None, float | None, float | None]
    source: str


_MDETR = "MDETR README (.github/flickr.md, .github/refexp.md)"
_GLIP = "GLIP paper (Li et al., CVPR 2022), test R@1 as issue 23 quotes it"
PUBLISHED: tuple[Published, ...] = (
    Published("MDETR R101", "Flickr30k", "val", (82.5, 92.9, 94.9), _MDETR),
    Published("MDETR R101", "Flickr30k", "test", (83.4, 93.5, 95.3), _MDETR),
    Published("MDETR EfficientNet-B3", "Flickr30k", "val", (82.9, 93.2, 95.2), _MDETR),
    Published("MDETR EfficientNet-B3", "Flickr30k", "test", (84.0, 93.8, 95.6), _MDETR),
    Published("MDETR EfficientNet-B5", "Flickr30k", "val", (83.6, 93.4, 95.1), _MDETR),
    Published("MDETR EfficientNet-B5", "Flickr30k", "test", (84.3, 93.9, 95.8), _MDETR),
    Published("MDETR R101, merged-box", "Flickr30k", "val", (82.3, 91.8, 93.7), _MDETR),
    Published("MDETR R101, merged-box", "Flickr30k", "test", (83.8, 92.7, 94.4), _MDETR),
    Published("GLIP-T", "Flickr30k", "test", (85.7, None, None), _GLIP),
    Published("GLIP-L", "Flickr30k", "test", (87.1, None, None), _GLIP),
    *(
        Published(model, dataset, split, (value, None, None), _MDETR)
        for model, rows in (
            ("MDETR R101", (86.75, 89.58, 81.41, 79.52, 84.09, 70.62, 81.64, 80.89)),
            ("MDETR EfficientNet-B3", (87.51, 90.40, 82.67, 81.13, 85.52, 72.96, 83.35, 83.31)),
        )
        for (dataset, split), value in zip(
            (
                ("RefCOCO", "val"),
                ("RefCOCO", "testA"),
                ("RefCOCO", "testB"),
                ("RefCOCO+", "val"),
                ("RefCOCO+", "testA"),
                ("RefCOCO+", "testB"),
                ("RefCOCOg", "val"),
                ("RefCOCOg", "test"),
            ),
            rows,
            strict=True,
        )
    ),
)


def published(model: str | None, dataset: str | None, split: str) -> Published | None:
    """The published row of ``model`` (a paper name, e.g. ``GLIP-T``) on a dataset split, if sourced."""
    for row in PUBLISHED:
        if (row.model, row.dataset, row.split) == (model, dataset, split):
            return row
    return None


def run_split(results: Mapping[str, Any]) -> str:
    """The split a run's test numbers are of: ``testA`` etc. from an MDETR file's name, else ``test``."""
    config = results.get("config")
    task = config.get("task") if isinstance(config, Mapping) else None
    name = str(task.get("test_json") or "") if isinstance(task, Mapping) else ""
    match = re.search(r"_(val|test[AB]?)\.json$", name)
    return match.group(1) if match else "test"


def _scores(test: Mapping[str, Any]) -> tuple[list[float | None], float | None]:
    """(@1, @5, @10) of the main protocol (any-box recall or precision) and merged-box R@1."""
    any_box, merged_box = test.get("any_box"), test.get("merged_box")
    main: Mapping[str, Any] = any_box if isinstance(any_box, Mapping) else test
    merged: Mapping[str, Any] = merged_box if isinstance(merged_box, Mapping) else {}
    prefix = "R" if main is not test else "P"
    values = [_number(main.get(f"{prefix}@{k}")) for k in (1, 5, 10)]
    return values, _number(merged.get("R@1"))


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _mean_std(values: Sequence[float | None]) -> str:
    numbers = [v for v in values if v is not None]
    if not numbers:
        return "-"
    mean = statistics.fmean(numbers)
    return f"{mean:.1f}" if len(numbers) < 2 else f"{mean:.1f} ± {statistics.pstdev(numbers):.1f}"


def _fmt(value: float | None) -> str:
    """A published figure as its source prints it (85.7, 86.75)."""
    return "-" if value is None else f"{value:g}"


def grounding_lines(jobs: Sequence[Job]) -> list[str]:
    """The Markdown section of the complete grounding runs among ``jobs`` ([] when there are none)."""
    runs = [j for j in jobs if j.status == COMPLETE and j.results is not None and is_grounding(j.results)]
    if not runs:
        return []
    cells: dict[tuple[str, str, str, str, Any], list[Job]] = defaultdict(list)
    for job in runs:
        dataset = job.dataset or job.point.task
        p = job.point
        cells[(p.model, dataset, run_split(job.results or {}), p.mode, p.shots)].append(job)
    header = ["model", "dataset", "split", "mode", "shots", "seeds"]
    header += ["@1", "@5", "@10", "merged R@1", "paper @1"]
    rows = []
    order = sorted(cells, key=lambda k: (k[0], k[1], k[2], mode_sort_key(k[3]), shots_sort_key(k[4])))
    for model, dataset, split, mode, shots in order:
        group = cells[(model, dataset, split, mode, shots)]
        scores = [_scores((j.results or {}).get("test") or {}) for j in group]
        paper = published(group[0].paper_model, dataset, split)
        rows.append(
            [model, dataset, split, mode, shots, len(group)]
            + [_mean_std([s[0][i] for s in scores]) for i in range(3)]
            + [_mean_std([s[1] for s in scores]), _fmt(paper.values[0]) if paper else "-"]
        )
    lines = [
        "",
        "## Phrase grounding",
        "",
        "Test split, percent: Flickr30k Entities Recall@k, any-box (merged-box R@1 beside it), as "
        "MDETR's evaluator computes it; RefCOCO/+/g precision@k (GIoU >= 0.5). Ours: mean ± std over "
        "seeds. `paper @1` is the published figure of the model's paper row on the same split "
        "(docs/grounding.md); `-` where none is sourced.",
        "",
        *md_table(header, rows),
    ]
    return lines + _published_table({d for _, d, _, _, _ in cells})


def _published_table(datasets: set[str]) -> list[str]:
    rows = [
        [r.model, r.dataset, r.split, *(_fmt(v) for v in r.values), r.source]
        for r in PUBLISHED
        if r.dataset in datasets
    ]
    if not rows:
        return []
    return [
        "",
        "Published numbers on these datasets:",
        "",
        *md_table(["model", "dataset", "split", "@1", "@5", "@10", "source"], rows),
    ]
