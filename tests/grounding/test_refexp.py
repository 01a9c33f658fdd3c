"""RefCOCO precision@k on the hand-made MDETR file (conftest.py), worked out by hand.

Ground truth: entry 10 "man on the left" (10,10,30,50); 11 "the dog" (0,0,10,10); 12 "shirt" (0,0,20,20).

* 10: (0,0,5,5) and (10,10,30,50) with equal scores: MDETR's order puts the larger box first, so
  the right box is first: found at 1.
* 11: (1,0,11,6): IoU 54 / 106 = 0.509, but the enclosing box (0,0,11,10) adds 4 / 110, GIoU
  0.473: found with IoU, not with MDETR's GIoU.
* 12: no scores, so ranked as given: (50,50,60,60) first, the right box second: found at 5.

GIoU: P@1 1/3, P@5 2/3, P@10 2/3. IoU: P@1 2/3, P@5 3/3.
"""

from __future__ import annotations

import json

import pytest
import torch

from adapt.data.errors import DataError
from adapt.data.mdetr import mdetr_samples
from adapt.evaluate import main as evaluate_main
from adapt.metrics.refexp import precision_at_k, rank_by_score, read_refexp_predictions
from tests.grounding.conftest import MDETR_REFCOCO, write_json

PREDICTIONS = [
    {"image_id": 10, "boxes": [[0, 0, 5, 5], [10, 10, 30, 50]], "scores": [0.5, 0.5]},
    {"image_id": 11, "boxes": [[1, 0, 11, 6]], "scores": [0.9]},
    {"image_id": 12, "boxes": [[50, 50, 60, 60], [0, 0, 20, 20]]},
]


def test_hand_checked_precision(refcoco_file):
    samples = mdetr_samples(refcoco_file)
    giou = precision_at_k(samples, PREDICTIONS)
    assert (giou["P@1"], giou["P@5"], giou["P@10"]) == (33.3333, 66.6667, 66.6667)
    assert giou["per_dataset"] == {"refcoco": {"P@1": 33.3333, "P@5": 66.6667, "P@10": 66.6667}}
    assert giou["expressions"] == 3 and giou["criterion"] == "giou"
    iou = precision_at_k(samples, PREDICTIONS, criterion="iou")
    assert (iou["P@1"], iou["P@5"]) == (66.6667, 100.0)


def test_ties_go_to_the_larger_box_like_mdetr():
    ranked = rank_by_score(
        torch.tensor([[0.0, 0, 5, 5], [10, 10, 30, 50], [0, 0, 9, 9]]), torch.tensor([0.5, 0.5, 0.7])
    )
    assert ranked.tolist() == [[0, 0, 9, 9], [10, 10, 30, 50], [0, 0, 5, 5]]


@pytest.mark.parametrize(
    ("predictions", "message"),
    [
        (PREDICTIONS[:2], r"no prediction for 1 of 3 expressions \(e.g. 12\)"),
        ([*PREDICTIONS, PREDICTIONS[0]], r"entry 3: a second prediction for image_id 10"),
        (
            [{"image_id": 10, "boxes": [[0, 0, 5, 5]], "scores": [0.5, 0.1]}],
            r"entry 0: 'scores' is not a list of 1 numbers",
        ),
        ([{"image_id": 10}], r"entry 0 lacks image_id/boxes"),
    ],
)
def test_bad_predictions(refcoco_file, tmp_path, predictions, message):
    with pytest.raises(DataError, match=message):
        precision_at_k(
            mdetr_samples(refcoco_file), read_refexp_predictions(write_json(tmp_path / "p.json", predictions))
        )


def test_an_expression_names_one_box(tmp_path):
    data = json.loads(json.dumps(MDETR_REFCOCO))
    data["annotations"].append(dict(data["annotations"][0], id=200))
    with pytest.raises(DataError, match=r"entry 10 has 2 boxes; a referring expression names exactly one"):
        precision_at_k(mdetr_samples(write_json(tmp_path / "r.json", data)), PREDICTIONS)


def test_cli(refcoco_file, tmp_path, capsys):
    results = write_json(tmp_path / "results.json", PREDICTIONS)
    argv = ["refexp", "--annotations", str(refcoco_file), "--results", str(results)]
    assert evaluate_main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["P@1"] == 33.3333
    assert evaluate_main([*argv, "--criterion", "iou"]) == 0
    assert "66.67" in capsys.readouterr().out
    assert (
        evaluate_main(["refexp", "--annotations", str(tmp_path / "none.json"), "--results", str(results)])
        == 2
    )
    assert "annotation file not found" in capsys.readouterr().err
