"""adapt.evaluate: identical to pycocotools on the same files, in percent, quiet, with the +1 mapping."""

from __future__ import annotations

import contextlib
import io
import json
import random

import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from adapt.data.transforms import build_transforms
from adapt.evaluate import main
from adapt.metrics.coco import detections_to_coco, evaluate
from tests.data.conftest import write_coco


@pytest.fixture
def files(tmp_path):
    rng = random.Random(0)
    images = []
    for i in range(12):
        boxes = [
            (
                rng.randint(1, 3),
                rng.randint(0, 80),
                rng.randint(0, 60),
                rng.randint(5, 40),
                rng.randint(5, 40),
            )
            for _ in range(rng.randint(0, 4))
        ]
        images.append({"file": f"{i}.png", "size": (128, 96), "boxes": boxes})
    gt = write_coco(tmp_path, "gt.json", images, ("cat", "dog", "eel"), make_images=False)
    dets = []
    for ann in json.loads(gt.read_text())["annotations"]:
        x, y, w, h = ann["bbox"]
        jitter = [rng.uniform(-4, 4) for _ in range(4)]
        dets.append(
            {
                "image_id": ann["image_id"],
                "category_id": ann["category_id"],
                "bbox": [x + jitter[0], y + jitter[1], w + jitter[2], h + jitter[3]],
                "score": rng.random(),
            }
        )
        if rng.random() < 0.5:  # a false positive of another class
            dets.append(
                {
                    "image_id": ann["image_id"],
                    "category_id": rng.randint(1, 3),
                    "bbox": [1, 1, 20, 20],
                    "score": rng.random(),
                }
            )
    dt = tmp_path / "dt.json"
    dt.write_text(json.dumps(dets))
    return gt, dt


def _pycocotools(gt, dt, max_dets=100):
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt))
        coco_dt = coco_gt.loadRes(str(dt))
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.params.maxDets = [1, 10, max_dets]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


@pytest.mark.parametrize("max_dets", [100, 2])
def test_same_ap_as_pycocotools(files, max_dets, capsys):
    gt, dt = files
    reference = _pycocotools(gt, dt, max_dets)
    result = evaluate(gt, dt, max_dets=max_dets)
    assert capsys.readouterr().out == ""  # pycocotools' prints are captured
    assert "Average Precision" in result["summary"]
    precision = reference.eval["precision"]
    # COCOeval.stats[0] hard-codes 100 detections (it is -1 for other caps); AP50/AP75 use the cap
    all_dets = precision[:, :, :, 0, -1]
    expected_ap = reference.stats[0] if max_dets == 100 else all_dets[all_dets > -1].mean()
    assert result["ap"] == pytest.approx(expected_ap * 100, abs=1e-3)
    assert result["ap50"] == pytest.approx(reference.stats[1] * 100, abs=1e-3)
    assert result["ap75"] == pytest.approx(reference.stats[2] * 100, abs=1e-3)
    if max_dets == 100:
        for i, key in enumerate(("ap_small", "ap_medium", "ap_large"), start=3):
            assert result[key] == (
                None if reference.stats[i] < 0 else pytest.approx(reference.stats[i] * 100, abs=1e-3)
            )
    assert 0 < result["ap"] < 100
    for k, name in enumerate(("cat", "dog", "eel")):
        p = precision[:, :, k, 0, -1]
        assert result["per_category"][name] == pytest.approx(p[p > -1].mean() * 100, abs=1e-3)


def test_perfect_and_empty_detections(files):
    gt, _ = files
    anns = json.loads(gt.read_text())["annotations"]
    perfect = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in anns
    ]
    assert evaluate(gt, perfect)["ap"] == pytest.approx(100.0)
    empty = evaluate(gt, [])
    assert empty["ap"] == 0.0 and set(empty["per_category"].values()) == {0.0}


def test_category_without_ground_truth_is_none(tmp_path):
    gt = write_coco(tmp_path, "gt.json", [{"file": "a.png", "boxes": [(1, 0, 0, 10, 10)]}], make_images=False)
    result = evaluate(gt, [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9}])
    assert result["per_category"] == {"cat": 100.0, "dog": None}


def test_detections_to_coco_maps_size_labels_and_plus_one():
    pred = {
        "boxes": torch.tensor([[10.0, 20.0, 29.0, 59.0]]),
        "scores": torch.tensor([0.5]),
        "labels": torch.tensor([2]),
    }
    target = {"image_id": 7, "size": (800, 1066), "orig_size": (480, 640)}
    (det,) = detections_to_coco([pred], [target], category_ids=[3, 9])
    sx, sy = 640 / 1066, 480 / 800
    assert det["image_id"] == 7 and det["category_id"] == 9 and det["score"] == 0.5
    assert det["bbox"] == pytest.approx(
        [10 * sx, 20 * sy, 29 * sx - 10 * sx + 1, 59 * sy - 20 * sy + 1], abs=1e-3
    )


def test_cli_matches_and_writes_json(files, tmp_path, capsys):
    gt, dt = files
    out = tmp_path / "metrics.json"
    assert main(["--gt", str(gt), "--dt", str(dt), "--json", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed["ap"] == pytest.approx(_pycocotools(gt, dt).stats[0] * 100, abs=1e-3)
    assert main(["--gt", str(gt), "--dt", str(dt)]) == 0
    assert "COCO box AP" in capsys.readouterr().out


def test_cli_names_bad_detection_file(files, tmp_path, capsys):
    gt, _ = files
    bad = tmp_path / "dt.json"
    bad.write_text(json.dumps([{"image_id": 999, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}]))
    assert main(["--gt", str(gt), "--dt", str(bad)]) == 2
    assert "dt.json: results for image ids not in the ground truth: [999]" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::adapt.data.errors.DataWarning")
def test_a_perfect_detector_scores_100_on_a_split_with_bad_boxes(tmp_path):
    """Boxes of non-positive size or outside the image used to cost a perfect detector AP."""
    from adapt.data import build_task

    images = [
        {
            "file": "a.png",
            "size": (64, 48),
            "boxes": [(1, 4, 4, 20, 20), (1, -10, -10, 30, 30), (2, 5, 5, 0, 9)],
        },
        {"file": "b.png", "size": (64, 48), "boxes": [(2, 30, 20, 40, 40), (2, 100, 100, 10, 10)]},
        {"file": "c.png", "size": (64, 48), "boxes": [(1, 8, 8, 16, 16), (2, 10, 10, 12, -4)]},
    ]
    gt = write_coco(tmp_path, "test.json", images, ("cat", "dog"))
    task = build_task(
        {"id": "t", "data_root": str(tmp_path), "test_json": "test.json", "val_json": "test.json"}
    )
    ds = task.dataset("test", transforms=build_transforms(False, min_size_test=96, max_size_test=160))
    # the detector predicts exactly the targets the model trains on, in network-input pixels
    targets = [ds[i][1] for i in range(len(ds))]
    predictions = [
        {"boxes": t["boxes"], "scores": torch.ones(len(t["labels"])), "labels": t["labels"]} for t in targets
    ]
    detections = detections_to_coco(predictions, targets, task.category_ids)
    assert evaluate(ds.coco, detections)["ap"] == pytest.approx(100.0)  # the run's ground truth
    assert evaluate(gt, detections)["ap"] == pytest.approx(100.0)  # python -m adapt.evaluate's
    # against the raw file (what pycocotools alone does) the same detections fall short
    dt = tmp_path / "dt.json"
    dt.write_text(json.dumps(detections))
    assert _pycocotools(gt, dt).stats[0] * 100 < 80


# ------------------------------------------------------------------------------------------------
# adapt.predict's detections.json: images matched by file name, categories by name


def _predict_file(gt, tmp_path, names_order, rename=None):
    """A perfect detector's detections as adapt.predict writes them for `images/*.png`: ids 1..N in
    the shell's (name) order, which is not the ground truth's, categories numbered in `names_order`."""
    data = json.loads(gt.read_text())
    listed = sorted(data["images"], key=lambda im: im["file_name"])  # 0, 1, 10, 11, 2, ...
    assert [im["id"] for im in listed] != list(range(1, len(listed) + 1))
    new_id = {im["id"]: n for n, im in enumerate(listed, start=1)}
    old_names = {c["id"]: c["name"] for c in data["categories"]}
    new_cat = {name: n for n, name in enumerate(names_order, start=1)}
    renamed = rename or {}
    coco = {
        "images": [
            {"id": new_id[im["id"]], "file_name": "images/" + renamed.get(im["file_name"], im["file_name"])}
            for im in listed
        ],
        "categories": [{"id": n, "name": name} for name, n in new_cat.items()],
        "annotations": [
            {
                "id": k,
                "image_id": new_id[a["image_id"]],
                "category_id": new_cat[old_names[a["category_id"]]],
                "bbox": a["bbox"],
                "score": 1.0,
            }
            for k, a in enumerate(data["annotations"], start=1)
        ],
    }
    out = tmp_path / "detections.json"
    out.write_text(json.dumps(coco))
    return out


def test_predicted_images_in_another_order_are_matched_by_file_name(files, tmp_path, capsys):
    """Issue 24 item 14: the ids numbered the inputs, so a perfect detector scored far under 100."""
    gt, _ = files
    dt = _predict_file(gt, tmp_path, ["eel", "cat", "dog"])
    assert evaluate(gt, dt)["ap"] == pytest.approx(100.0)
    assert main(["--gt", str(gt), "--dt", str(dt), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ap"] == pytest.approx(100.0)


def test_a_results_file_whose_images_cannot_be_matched_is_refused_in_one_sentence(files, tmp_path, capsys):
    gt, _ = files
    dt = _predict_file(gt, tmp_path, ["cat", "dog", "eel"], rename={"3.png": "holiday.png"})
    assert main(["--gt", str(gt), "--dt", str(dt)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"adapt.evaluate: error: {dt}: 1 of its 12 images cannot be matched to the ground truth by file "
        "name (1 have no image of that name in the ground truth (e.g. 'images/holiday.png')), and its "
        "image ids number its own inputs, so its AP would be meaningless: predict on the ground "
        "truth's own images (their file names)\n"
    )
    # two inputs of one name (d1/3.png, d2/3.png) cannot both be ground-truth image 3.png
    data = json.loads(dt.read_text())
    data["images"][0]["file_name"] = "d1/3.png"
    data["images"][1]["file_name"] = "d2/3.png"
    dt.write_text(json.dumps(data))
    assert main(["--gt", str(gt), "--dt", str(dt)]) == 2
    err = capsys.readouterr().err
    assert "images 'd1/3.png' and 'd2/3.png' both match ground-truth image '3.png' (id 4)" in err
    assert err.count("\n") == 1
