"""`python -m adapt.predict IMG --classes a,b --model M --checkpoint DIR` on a save_pretrained folder:
transformers' own pipeline's boxes and scores, written in transformers' box convention."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adapt.families import build_family
from adapt.predict import main as predict
from tests.families.conftest import ALL, CLASSES, by_score, image, transformers_detections


def threshold_between(scores: torch.Tensor) -> float:
    """A threshold halfway between two scores near the median: some detections pass, and none
    sits on the threshold, where rounding could decide."""
    ranked = scores.sort(descending=True).values
    k = len(ranked) // 2
    return float(ranked[k] + ranked[k + 1]) / 2


@pytest.mark.parametrize("name", ALL)
def test_predict_on_a_save_pretrained_folder_equals_transformers_pipeline(tmp_path: Path, name: str):
    fam = build_family(name)
    folder = tmp_path / "weights"
    fam.save_pretrained(folder)
    img = image(7, (60, 90))
    path = tmp_path / "image.png"
    img.save(path)
    threshold = threshold_between(transformers_detections(fam, img, CLASSES, 0.0)["scores"])
    out = tmp_path / "out"
    args = [str(path), "--classes", ",".join(CLASSES), "--checkpoint", str(folder), "--out", str(out)]
    assert predict([*args, "--model", name, "--score-threshold", str(threshold)]) == 0
    coco = json.loads((out / "detections.json").read_text())
    assert [c["name"] for c in coco["categories"]] == CLASSES
    assert coco["images"][0]["width"] == 90 and coco["images"][0]["height"] == 60
    anns = coco["annotations"]
    # transformers' convention: x2 = x + w (no +1), in the image's own pixels.
    boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]).reshape(-1, 4)
    scores = torch.tensor([a["score"] for a in anns])
    want_scores, want_boxes = by_score(transformers_detections(fam, img, CLASSES, threshold))
    got_scores, got_boxes = by_score({"scores": scores, "boxes": boxes})
    assert len(want_scores) > 0 and len(got_scores) == len(want_scores)
    torch.testing.assert_close(got_scores, want_scores, rtol=0, atol=1e-5)
    torch.testing.assert_close(got_boxes, want_boxes, rtol=0, atol=1e-3 + 1e-6)  # written at 3 decimals
    # The folder alone picks its family from config.json's model_type.
    assert predict([*args[:-2], "--out", str(tmp_path / "alone"), "--score-threshold", str(threshold)]) == 0
    alone = json.loads((tmp_path / "alone" / "detections.json").read_text())["annotations"]
    assert [a["bbox"] for a in alone] == [a["bbox"] for a in anns]


def test_glip_size_flags_are_refused_for_a_family(tmp_path: Path, capsys: pytest.CaptureFixture):
    path = tmp_path / "image.png"
    image(1, (40, 40)).save(path)
    args = [str(path), "--classes", "fish", "--model", "owlv2_mini", "--min-size", "96"]
    assert predict([*args, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--min-size is a GLIP setting" in err and err.count("\n") == 1
