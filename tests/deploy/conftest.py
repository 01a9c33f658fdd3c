"""Deploy tests: exports of every mode on the mini model at the demo's sizes, and their ONNX files.

Exports are made the way a training run makes them (``export_run``), from the oracle fixture's
weights with the mode's trainable tensors moved (seeded), so each mode's file differs from the
base model. The ONNX files are written once per session: the first costs one trace of the mini
graph, the others reuse it with their own weights (adapt.deploy.export).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import adapt
from adapt.export import checkpoint_identity, model_identity
from adapt.model import GLIPConfig, build_glip, load_checkpoint
from adapt.modes import build_policy, export_run
from adapt.prompt import encode_prompt, load_tokenizer

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

PACKAGE = Path(adapt.__file__).parent
FIXTURE = Path(__file__).parents[1] / "fixtures" / "glip_mini_oracle"
CHECKPOINT = FIXTURE / "mini_glip.pth"
DEMO = PACKAGE / "data" / "demo"
# The demo task's test split, at the demo budget's test sizes (conf/budget/demo_glip_mini.yaml).
DEMO_TEST_IMAGES = [
    str(DEMO / "images" / im["file_name"])
    for im in json.loads((DEMO / "annotations" / "test.json").read_text())["images"]
]
DEMO_SIZES = {"min_size_test": 320, "max_size_test": 533}
# "tree" is the demo's class; "jellyfish" is two word pieces, so the class pooling averages tokens.
CLASSES = ("tree", "jellyfish", "bush")
# The shipped LoRA targets at rank 2: a peft LoraConfig node, as conf/mode/lora.yaml builds it.
LORA = {
    "_target_": "peft.LoraConfig",
    "r": 2,
    "lora_alpha": 4,
    "target_modules": yaml.safe_load((PACKAGE / "conf" / "mode" / "lora.yaml").read_text())["policy"][
        "config"
    ]["target_modules"],
}
MODES = ("prompt", "linear", "full", "lora")


def mini_arch() -> dict:
    arch = yaml.safe_load((PACKAGE / "conf" / "model" / "glip_mini.yaml").read_text())["arch"]
    arch["input"].update(DEMO_SIZES)
    return arch


def make_export(out: Path, mode: str, seed: int = 7, scale: float = 0.02) -> Path:
    """A run's export of ``mode``: fixture weights, the mode applied, its trainable tensors moved."""
    model = build_glip(GLIPConfig.from_dict(mini_arch()))
    load_checkpoint(model, CHECKPOINT)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # peft draws lora_A from the global generator
        mode_cfg = {"name": mode}
        if mode == "lora":
            mode_cfg["policy"] = {"_target_": "adapt.modes.LoRA", "config": LORA}
        policy = build_policy(mode_cfg)
        trainable = policy.apply(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in trainable:
                p.add_(scale * torch.randn(p.shape, generator=g))
    model.eval()
    state = {n: p.detach() for n, p in model.named_parameters() if n in trainable}
    prompt = encode_prompt(list(CLASSES), load_tokenizer())
    identity = model_identity(model, "glip_mini", checkpoint_identity(CHECKPOINT))
    return export_run(out, model, policy, state, prompt, identity, task="demo")


@pytest.fixture(scope="session")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[list[str], Path]]:
    """Per source ("prompt", "linear", "full", "lora", "classes"): (adapt.predict's source flags, .onnx)."""
    from adapt.deploy.__main__ import main

    root = tmp_path_factory.mktemp("deploy")
    torch.set_num_threads(2)
    files: dict[str, tuple[list[str], Path]] = {}
    for mode in MODES:
        export = make_export(root / mode / "export", mode)
        onnx_file = root / f"{mode}.onnx"
        assert main(["export", str(export), "--checkpoint", str(CHECKPOINT), "--out", str(onnx_file)]) == 0
        files[mode] = (["--prompt", str(export), "--checkpoint", str(CHECKPOINT)], onnx_file)
    flags = [
        "--classes", ",".join(CLASSES), "--model", "glip_mini", "--checkpoint", str(CHECKPOINT),
        "--min-size", str(DEMO_SIZES["min_size_test"]), "--max-size", str(DEMO_SIZES["max_size_test"]),
    ]  # fmt: skip
    onnx_file = root / "classes.onnx"
    assert main(["export", *flags, "--out", str(onnx_file)]) == 0
    files["classes"] = (flags, onnx_file)
    return files


def match_detections(
    want: dict, got: dict, score_tol: float = 1e-4, box_tol: float = 0.1
) -> dict[str, float]:
    """Pair two detections.json files' detections one to one (same image and label, scores within
    ``score_tol``, xywh boxes within ``box_tol`` px); returns the largest differences seen.

    Order is not compared: detections with equal scores may come in either order."""
    assert [i["file_name"] for i in got["images"]] == [i["file_name"] for i in want["images"]]
    assert got["categories"] == want["categories"]
    worst = {"score": 0.0, "box": 0.0, "detections": 0}
    for image in want["images"]:
        a = [d for d in want["annotations"] if d["image_id"] == image["id"]]
        b = [d for d in got["annotations"] if d["image_id"] == image["id"]]
        assert len(a) == len(b), (image["file_name"], len(a), len(b))
        assert sorted(d["category_id"] for d in a) == sorted(d["category_id"] for d in b)
        free = list(b)
        for d in sorted(a, key=lambda d: -d["score"]):
            options = [
                (
                    max(abs(u - v) for u, v in zip(d["bbox"], e["bbox"], strict=True)),
                    abs(d["score"] - e["score"]),
                    k,
                )
                for k, e in enumerate(free)
                if e["category_id"] == d["category_id"] and abs(d["score"] - e["score"]) <= score_tol
            ]
            assert options, f"{image['file_name']}: no match for {d}"
            box, score, k = min(options)
            assert box <= box_tol, f"{image['file_name']}: {d} is {box} px from its match {free[k]}"
            worst["score"], worst["box"] = max(worst["score"], score), max(worst["box"], box)
            free.pop(k)
        worst["detections"] += len(a)
    return worst
