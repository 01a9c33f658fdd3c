"""Recall@k on the hand-made Flickr release (conftest.py), every value worked out by hand below.

Ground truth (test split): A = (10,10,30,50), B = (60,10,80,50), merged M = (10,10,80,50),
S = (12,20,28,40), D = (0,0,10,10), F = (40,60,60,80), image 1002's child C1 = (0,0,100,100),
C2 = (1,0,100,100). IoU(M, A) = IoU(M, B) = 800 / 2800 = 0.29.

Predictions, per scored phrase (1001 sentence 2 has none; its entry is ignored):

| caption, phrase            | ranked boxes                  | any-box found at    | merged found at   |
|----------------------------|-------------------------------|---------------------|-------------------|
| 1001/0 "Two men" (people)  | M, A                          | 5, 10, all (A, #2)  | 1, 5, 10, all (M) |
| 1001/0 "red shirts" (cloth)| (12,20,28,30): IoU 160/320=.5 | 1, 5, 10, all (tie) | same              |
| 1001/1 "a man" (people)    | B                             | 1, 5, 10, all       | never (B vs M)    |
| 1001/1 "a dog" (animals, other) | (empty list)             | never               | never             |
| 1001/1 "a man" (people)    | 5 x (0,0,1,1), then A         | 10, all (A, #6)     | never             |
| 1001/3 "A field" (scene)   | (40,60,60,69): .45, then F    | 5, 10, all          | 5, 10, all        |
| 1001/3 "a shirt" (clothing)| S                             | 1, 5, 10, all       | same              |
| 1002/0 "A child" (people)  | C1                            | 1, 5, 10, all       | same (C1 == merge)|

any-box: R@1 4/8 = 50, R@5 6/8 = 75, R@10 7/8 = 87.5, upper bound 87.5
merged:  R@1 4/8 = 50, R@5 5/8 = 62.5, R@10 5/8 = 62.5
per type, any-box: people (4 phrases) 50 / 75 / 100; clothing 100 / 100 / 100; animals and other
(the one two-type phrase counts in both) 0; scene 0 / 100 / 100.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from adapt.data.errors import DataError, DataWarning
from adapt.data.flickr import flickr_samples
from adapt.evaluate import main as evaluate_main
from adapt.metrics.grounding import (
    evaluate_flickr,
    evaluate_grounding,
    flickr_prediction,
    found_at_k,
    read_predictions,
)
from tests.grounding.conftest import C1, A, B, F, S, write_json

M = (10, 10, 80, 50)

PREDICTIONS = [
    {"image_id": "1001", "sentence_id": 0, "boxes": [[M, A], [(12, 20, 28, 30)]]},
    {"image_id": "1001", "sentence_id": 1, "boxes": [[B], [], [(0, 0, 1, 1)] * 5 + [A]]},
    {"image_id": "1001", "sentence_id": 2, "boxes": []},
    {"image_id": 1001, "sentence_id": 3, "boxes": [[(40, 60, 60, 69), F], [S]]},
    {"image_id": "1002", "sentence_id": 0, "boxes": [[C1]]},
]


def as_json(predictions):
    return json.loads(json.dumps(predictions))


def test_hand_checked_recalls(flickr_root):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an empty entry for a caption without phrases is no warning
        result = evaluate_flickr(flickr_samples(flickr_root, "test"), as_json(PREDICTIONS))
    assert result["any_box"] == {"R@1": 50.0, "R@5": 75.0, "R@10": 87.5, "upper_bound": 87.5}
    assert result["merged_box"] == {"R@1": 50.0, "R@5": 62.5, "R@10": 62.5, "upper_bound": 62.5}
    per_type = result["per_type"]["any_box"]
    assert list(per_type) == ["people", "clothing", "animals", "scene", "other"]  # the paper's order
    assert per_type["people"] == {"R@1": 50.0, "R@5": 75.0, "R@10": 100.0, "upper_bound": 100.0}
    assert per_type["clothing"]["R@1"] == 100.0
    assert (
        per_type["animals"] == per_type["other"] == {"R@1": 0.0, "R@5": 0.0, "R@10": 0.0, "upper_bound": 0.0}
    )
    assert per_type["scene"] == {"R@1": 0.0, "R@5": 100.0, "R@10": 100.0, "upper_bound": 100.0}
    assert result["per_type"]["merged_box"]["people"] == {
        "R@1": 50.0,
        "R@5": 50.0,
        "R@10": 50.0,
        "upper_bound": 50.0,
    }
    assert (result["phrases"], result["sentences"]) == (8, 4)


def test_iou_is_continuous_and_half_counts():
    # (0,0,10,10) vs (0,0,10,5): 50 / 100 = 0.5 exactly (with +1 widths it would be 66 / 121)
    iou = torch.tensor([[0.5]], dtype=torch.float64)
    assert found_at_k(iou, [1], 0.5) == [True]
    assert found_at_k(iou - 1e-12, [1], 0.5) == [False]
    assert found_at_k(torch.zeros(0, 2), [1, None], 0.5) == [False, False]


def test_ranked_list_is_scored_in_the_given_order(flickr_root):
    # the same boxes, other order: "Two men" [A, M] is found at 1 (any-box), merged only at 5
    preds = as_json(PREDICTIONS)
    preds[0]["boxes"][0] = [A, M]
    result = evaluate_flickr(flickr_samples(flickr_root, "test"), preds)
    assert result["any_box"]["R@1"] == 62.5 and result["merged_box"]["R@1"] == 37.5


def test_duplicates_and_unexpected_captions_warn_missing_and_miscounted_raise(flickr_root):
    samples = flickr_samples(flickr_root, "test")
    preds = [*as_json(PREDICTIONS), dict(PREDICTIONS[-1], boxes=[[A]])]
    with pytest.warns(
        DataWarning, match=r"captions predicted twice \(image 1002, sentence 0\); second predictions ignored"
    ):
        assert evaluate_flickr(samples, preds)["any_box"]["R@1"] == 50.0  # the first one counts
    preds = as_json(PREDICTIONS)
    preds[2]["boxes"] = [[A]]
    with pytest.warns(
        DataWarning, match=r"captions without phrases to score \(image 1001, sentence 2\); ignored"
    ):
        evaluate_flickr(samples, preds)
    with pytest.raises(DataError, match=r"no prediction for 1 of 4 captions \(e.g. image 1002, sentence 0\)"):
        evaluate_flickr(samples, as_json(PREDICTIONS[:-1]))
    preds = as_json(PREDICTIONS)
    preds[1]["boxes"] = preds[1]["boxes"][:2]
    with pytest.raises(
        DataError, match=r"entry 1 \(image 1001, sentence 1\) has 2 box lists but the caption has 3"
    ):
        evaluate_flickr(samples, preds)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"image_id": "1", "boxes": []}, r"r.json: entry 0 lacks image_id/sentence_id/boxes"),
        ({"image_id": "1", "sentence_id": "0", "boxes": []}, r"entry 0: sentence_id '0' is not an integer"),
        ({"image_id": 1.5, "sentence_id": 0, "boxes": []}, r"entry 0: image_id 1.5 is not an id"),
        (
            {"image_id": "1", "sentence_id": 0, "boxes": [[[1, 2, 3]]]},
            r"entry 0, boxes\[0\] is not a list of \[x1, y1, x2, y2\]",
        ),
        (
            {"image_id": "1", "sentence_id": 0, "boxes": [[[5, 2, 3, 4]]]},
            r"entry 0, boxes\[0\] has a box with x2 < x1",
        ),
        ({"image_id": "1", "sentence_id": 0, "boxes": {"a": 1}}, r"entry 0: 'boxes' is not a list"),
    ],
)
def test_malformed_results_name_entry_and_key(tmp_path, entry, message):
    with pytest.raises(DataError, match=message):
        read_predictions(write_json(tmp_path / "r.json", [entry]))


def test_results_must_be_a_list(tmp_path):
    with pytest.raises(DataError, match=r"r.json: expected a list"):
        read_predictions(write_json(tmp_path / "r.json", {"image_id": 1}))


def test_prediction_entry_undoes_the_plus_one_convention():
    # a GLIP box on the +1 grid at half the original size: x2 = xmax/2 - 1 -> back to xmax
    entry = flickr_prediction(
        1001, 3, [torch.tensor([[20.0, 30.0, 29.0, 39.0]]), torch.zeros(0, 4)], (40, 50), (80, 100)
    )
    assert entry == {"image_id": "1001", "sentence_id": 3, "boxes": [[[40.0, 60.0, 59.0, 79.0]], []]}


def test_cli_prints_recalls_as_json(flickr_root, tmp_path, capsys):
    results = write_json(tmp_path / "results.json", PREDICTIONS)
    out = tmp_path / "metrics.json"
    argv = [
        "grounding",
        "--flickr-root",
        str(flickr_root),
        "--split",
        "test",
        "--results",
        str(results),
        "--json",
    ]
    assert evaluate_main([*argv, "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["any_box"] == {"R@1": 50.0, "R@5": 75.0, "R@10": 87.5, "upper_bound": 87.5}
    assert printed["split"] == "test" and json.loads(out.read_text()) == printed
    assert evaluate_main(argv[:-1]) == 0 and "merged_box" in capsys.readouterr().out  # rich tables


def test_cli_errors_are_one_line(flickr_root, tmp_path, capsys):
    results = write_json(tmp_path / "results.json", PREDICTIONS[:2])
    argv = ["grounding", "--flickr-root", str(flickr_root), "--split", "test", "--results", str(results)]
    assert evaluate_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("adapt.evaluate grounding: error: ") and "no prediction for 2 of 4 captions" in err
    assert "\n" not in err


def test_val_split(flickr_root):
    result = evaluate_grounding(flickr_root, "val", [{"image_id": "1002", "sentence_id": 0, "boxes": [[C1]]}])
    assert result["any_box"]["R@1"] == 100.0 and result["split"] == "val"


def test_detection_cli_unchanged(tmp_path, capsys):
    # the detection form still takes --gt/--dt and still fails the way it did on a missing file
    assert evaluate_main(["--gt", str(tmp_path / "none.json"), "--dt", str(tmp_path / "d.json")]) == 2
    assert "annotation file not found" in capsys.readouterr().err
