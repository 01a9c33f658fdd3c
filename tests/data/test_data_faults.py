"""Datasets that used to pass the checks and surprise later: string image ids, an empty test split,
two categories of one name, a real category with id 0.

Each is found when the split is opened (or the task built), so a run stops before its first
training step with one sentence naming the file (docs/bad_input.md, "Data").
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest

import adapt
from adapt.data import build_task
from adapt.data.coco import load_coco_json
from adapt.data.errors import DataError, DataWarning
from tests.data.conftest import write_coco

DEMO = Path(adapt.__file__).parent / "data" / "demo"


def _demo_copy(tmp_path: Path) -> Path:
    root = tmp_path / "demo"
    shutil.copytree(DEMO, root)
    return root


def _edit(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _stops_before_training(tmp_path: Path, root: Path, expected: str) -> None:
    from adapt.runs.job import run_job
    from tests.train.train_helpers import compose_job

    run_dir = tmp_path / "run"
    with pytest.raises(DataError) as info:
        run_job(compose_job(f"task.data_root={root}", "mode=prompt", "shots=1"), run_dir=run_dir)
    assert str(info.value) == expected
    assert json.loads((run_dir / "results.json").read_text())["status"] == "failed"
    assert not (run_dir / "checkpoints").exists()  # not one training step


def _string_ids(data: dict) -> None:
    new = {img["id"]: f"img-{img['id']}" for img in data["images"]}
    for img in data["images"]:
        img["id"] = new[img["id"]]
    for ann in data["annotations"]:
        ann["image_id"] = new[ann["image_id"]]


def test_string_image_ids_stop_the_run_before_training(tmp_path):
    """Common in exported datasets; they used to fail in a DataLoader worker (`int("img-1")`)."""
    root = _demo_copy(tmp_path)
    test_json = root / "annotations" / "test.json"
    _edit(test_json, _string_ids)
    first = json.loads(test_json.read_text())["images"][0]
    _stops_before_training(
        tmp_path,
        root,
        f"{test_json}: image {first['file_name']!r} has id {first['id']!r}, not an integer; COCO image ids "
        "are integers: number the images 1, 2, ... and set each annotation's image_id to its image's number",
    )


def test_an_empty_test_split_stops_the_run_before_training(tmp_path):
    """It used to train to the end and fail with a bare AssertionError."""
    root = _demo_copy(tmp_path)
    test_json = root / "annotations" / "test.json"
    _edit(test_json, lambda d: d.update(images=[], annotations=[]))
    _stops_before_training(
        tmp_path,
        root,
        f"{test_json} (test split) lists no images, so the run has nothing to evaluate: point "
        "task.test_json at an annotation file that lists the test images",
    )


def test_two_categories_of_one_name_are_refused(tmp_path):
    images = [{"file": "a.png", "boxes": [(1, 1, 1, 9, 9), (2, 5, 5, 9, 9)]}]
    path = write_coco(tmp_path, "train.json", images, categories=("fish", "fish"))
    with pytest.raises(DataError) as info:
        build_task({"id": "t", "data_root": str(tmp_path), "train_json": "train.json", "categories": None})
    assert str(info.value) == (
        f"task t: categories 1 and 2 are both named 'fish' in {path}, so their prompt phrase and their AP "
        "would merge: give them distinct names there (or merge them into one category)"
    )


def test_two_categories_renamed_to_one_name_are_refused(tmp_path):
    write_coco(tmp_path, "train.json", [{"file": "a.png", "boxes": [(1, 1, 1, 9, 9)]}], categories=("a", "b"))
    cfg = {"id": "t", "data_root": str(tmp_path), "train_json": "train.json", "categories": ["a", "b"]}
    with pytest.raises(DataError, match=r"categories 1 and 2 are both renamed 'fish' in the task config"):
        build_task({**cfg, "renames": {"a": "fish", "b": "fish"}})


def test_a_category_zero_with_boxes_is_kept_unless_the_task_drops_it_and_then_counted(tmp_path):
    images = [{"file": "a.png", "boxes": [(0, 1, 1, 9, 9), (0, 2, 2, 9, 9), (1, 5, 5, 9, 9)]}]
    path = write_coco(tmp_path, "train.json", images, categories=("cat",), background=True)
    cfg = {"id": "t", "data_root": str(tmp_path), "train_json": "train.json", "categories": None}
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        kept = build_task(cfg)  # the task does not say drop_background: category 0 is a category
    assert kept.category_ids == [0, 1] and kept.raw_names == ["pets-background", "cat"]
    with pytest.warns(DataWarning) as caught:
        dropped = build_task({**cfg, "drop_background": True})
    assert dropped.category_ids == [1]
    assert str(caught[0].message) == (
        f"{path}: category 0 ('pets-background') was dropped as Roboflow's background category together "
        "with its 2 annotations, because the task sets drop_background: true; if it is a real category, set "
        "task.drop_background=false to keep it"
    )


def test_an_empty_background_category_is_dropped_quietly(tmp_path):
    path = write_coco(tmp_path, "t.json", [{"file": "a.png", "boxes": [(1, 1, 1, 9, 9)]}], background=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        assert [c["id"] for c in load_coco_json(path)["categories"]] == [1, 2]
