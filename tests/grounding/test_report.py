"""The report's grounding table: grounding runs next to the published numbers, apart from the AP tables."""

from __future__ import annotations

from pathlib import Path

from adapt import report as rp
from adapt.atomic import write_json
from adapt.report.grounding import PUBLISHED, published, run_split


def grounding_results(
    folder: Path, task: dict, mode: str, shots: int, seed: int, test: dict, paper: str
) -> None:
    write_json(
        {
            "status": "complete",
            "task": task["id"],
            "model": "glip_t",
            "mode": mode,
            "shots": shots,
            "seed": seed,
            "task_type": "grounding",
            "val_metric": "any_box.R@1",
            "test": test,
            "config": {"task": task, "model": {"name": "glip_t", "paper": paper}},
        },
        folder / "results.json",
    )


def recalls(r1: float, r5: float, r10: float, merged: float) -> dict:
    return {
        "any_box": {"R@1": r1, "R@5": r5, "R@10": r10, "upper_bound": r10},
        "merged_box": {"R@1": merged, "R@5": merged, "R@10": merged, "upper_bound": merged},
        "per_type": {},
    }


FLICKR = {"id": "flickr30k", "name": "Flickr30k", "type": "grounding"}
REFCOCO = {
    "id": "refcoco",
    "name": "RefCOCO",
    "type": "grounding",
    "test_json": "finetune_refcoco_testB.json",
}


def test_grounding_runs_get_their_own_table_beside_the_published_numbers(tmp_path):
    grounding_results(tmp_path / "a", FLICKR, "prompt", 1, 3, recalls(80.0, 90.0, 95.0, 70.0), "GLIP-T")
    grounding_results(tmp_path / "b", FLICKR, "prompt", 1, 30, recalls(82.0, 92.0, 95.0, 72.0), "GLIP-T")
    precision = {"P@1": 75.5, "P@5": 90.0, "P@10": 95.0, "per_dataset": {}}
    grounding_results(tmp_path / "c", REFCOCO, "zero", 0, 3, precision, "GLIP-T")
    report = rp.build_report(tmp_path, paper=rp.PaperReference())
    assert [j.status for j in report.jobs] == ["complete"] * 3  # no AP, yet not failed
    assert report.models == []  # no detection tables for them
    text = rp.render_markdown(report)
    assert "## Phrase grounding" in text
    # two seeds: mean ± population std; the paper's GLIP-T test R@1 beside ours
    ours = "| 81.0 ± 1.0 | 91.0 ± 1.0 | 95.0 ± 0.0 | 71.0 ± 1.0 | 85.7 |"
    assert f"| glip_t | Flickr30k | test | prompt | 1 | 2 {ours}" in text
    # RefCOCO testB from the file name; no GLIP figure is sourced there
    assert "| glip_t | RefCOCO | testB | zero | 0 | 1 | 75.5 | 90.0 | 95.0 | - | - |" in text
    assert "| MDETR R101 | RefCOCO | testB | 81.41 | - | - |" in text
    assert "| GLIP-L | Flickr30k | test | 87.1 | - | - |" in text


def test_published_rows_are_the_sourced_ones():
    assert published("GLIP-T", "Flickr30k", "test").values == (85.7, None, None)
    assert published("GLIP-L", "Flickr30k", "test").values == (87.1, None, None)
    assert published("GLIP-T", "Flickr30k", "val") is None  # not sourced: no remembered number
    assert published("MDETR R101", "Flickr30k", "test").values == (83.4, 93.5, 95.3)
    assert published("MDETR EfficientNet-B3", "RefCOCOg", "test").values[0] == 83.31
    assert len({(r.model, r.dataset, r.split) for r in PUBLISHED}) == len(PUBLISHED)
    assert run_split({"config": {"task": {"test_json": "finetune_refcoco+_testA.json"}}}) == "testA"
    assert run_split({"config": {"task": {"format": "flickr"}}}) == "test"
