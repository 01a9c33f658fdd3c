"""`python -m adapt.predict`: COCO detections and drawn images, from class names or an exported prompt."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml
from PIL import Image

import adapt
from adapt.model import GLIPConfig, build_glip, load_checkpoint
from adapt.predict import main
from adapt.prompt import encode_prompt, load_tokenizer
from adapt.train.export import export_run, model_identity
from adapt.train.modes import build_policy

FIXTURE = Path(__file__).parent / "fixtures" / "glip_mini_oracle"

IMAGES = [
    str(Path(adapt.__file__).parent / "data" / "demo" / "images" / n)
    for n in ("yell_r0_c0.jpg", "osbs_029.jpg")
]
COMMON = [
    "--model",
    "glip_mini",
    "--checkpoint",
    str(FIXTURE / "mini_glip.pth"),
    "--min-size",
    "96",
    "--max-size",
    "128",
]


def _prompt_artifact(out: Path) -> Path:
    arch = yaml.safe_load((Path(adapt.__file__).parent / "conf" / "model" / "glip_mini.yaml").read_text())[
        "arch"
    ]
    model = build_glip(GLIPConfig.from_dict(arch))
    load_checkpoint(model, FIXTURE / "mini_glip.pth")
    trainable = build_policy({"name": "prompt"}).apply(model)  # zero offset: the plain "tree" prompt
    state = {n: p.detach() for n, p in model.named_parameters() if n in trainable}
    prompt = encode_prompt(["tree"], load_tokenizer())
    return export_run(out, model, "prompt", state, prompt, model_identity(model, "glip_mini", None))


def test_predict_writes_coco_detections_and_drawn_images(tmp_path):
    out = tmp_path / "classes"
    assert main([*IMAGES, "--classes", "tree, bush", "--threshold", "0", "--out", str(out), *COMMON]) == 0
    coco = json.loads((out / "detections.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["tree", "bush"]
    assert [(i["width"], i["height"]) for i in coco["images"]] == [(320, 320), (400, 400)]
    assert coco["annotations"] and all(
        {"bbox", "score", "category_id", "image_id"} <= a.keys() for a in coco["annotations"]
    )
    for name in ("yell_r0_c0.jpg", "osbs_029.jpg"):
        with Image.open(out / name) as im:
            assert im.size in {(320, 320), (400, 400)}


def test_a_prompt_artifact_detects_like_its_caption_without_the_text_encoder(tmp_path):
    artifact = _prompt_artifact(tmp_path / "export")
    by_prompt, by_classes = tmp_path / "prompt", tmp_path / "classes"
    assert main([*IMAGES, "--prompt", str(artifact), "--out", str(by_prompt), *COMMON]) == 0
    assert main([*IMAGES, "--classes", "tree", "--out", str(by_classes), *COMMON]) == 0
    a = json.loads((by_prompt / "detections.json").read_text())["annotations"]
    b = json.loads((by_classes / "detections.json").read_text())["annotations"]
    assert a and len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x["category_id"] == y["category_id"]
        torch.testing.assert_close(
            torch.tensor(x["bbox"] + [x["score"]]), torch.tensor(y["bbox"] + [y["score"]]), atol=1e-3, rtol=0
        )
