"""`python -m adapt.predict`: COCO detections and drawn images, from class names or an exported prompt;
an export reproduces its run's test detections and AP with no other flag."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

import adapt
from adapt.detector import Detector
from adapt.export import checkpoint_identity, model_identity
from adapt.metrics.coco import coco_xywh, evaluate
from adapt.model import GLIPConfig, build_glip, load_checkpoint
from adapt.modes import build_policy, export_run
from adapt.predict import main
from adapt.prompt import encode_prompt, load_tokenizer
from adapt.runs.job import TEST_DETECTIONS, run_job

FIXTURE = Path(__file__).parent / "fixtures" / "glip_mini_oracle"
DEMO = Path(adapt.__file__).parent / "data" / "demo"

IMAGES = [
    str(Path(adapt.__file__).parent / "data" / "demo" / "images" / n)
    for n in ("yell_r0_c0.jpg", "osbs_029.jpg")
]
WEIGHTS = ["--checkpoint", str(FIXTURE / "mini_glip.pth")]
COMMON = ["--model", "glip_mini", *WEIGHTS, "--min-size", "96", "--max-size", "128"]


def _prompt_artifact(out: Path) -> Path:
    arch = yaml.safe_load((Path(adapt.__file__).parent / "conf" / "model" / "glip_mini.yaml").read_text())[
        "arch"
    ]
    arch["input"].update(min_size_test=96, max_size_test=128)  # recorded: predict's default
    model = build_glip(GLIPConfig.from_dict(arch))
    load_checkpoint(model, FIXTURE / "mini_glip.pth")
    policy = build_policy({"name": "prompt"})
    trainable = policy.apply(model)  # zero offset: the plain "tree" prompt
    state = {n: p.detach() for n, p in model.named_parameters() if n in trainable}
    prompt = encode_prompt(["tree"], load_tokenizer())
    identity = model_identity(model, "glip_mini", checkpoint_identity(FIXTURE / "mini_glip.pth"))
    return export_run(out, model, policy, state, prompt, identity)


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
    assert main([*IMAGES, "--prompt", str(artifact), "--out", str(by_prompt), *WEIGHTS]) == 0
    assert main([*IMAGES, "--classes", "tree", "--out", str(by_classes), *COMMON]) == 0
    a = json.loads((by_prompt / "detections.json").read_text())["annotations"]
    b = json.loads((by_classes / "detections.json").read_text())["annotations"]
    assert a and len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x["category_id"] == y["category_id"]
        torch.testing.assert_close(
            torch.tensor(x["bbox"] + [x["score"]]), torch.tensor(y["bbox"] + [y["score"]]), atol=1e-3, rtol=0
        )


def test_flags_override_what_the_export_records_with_a_note(tmp_path, capsys):
    artifact = _prompt_artifact(tmp_path / "export")
    out = tmp_path / "out"
    args = [IMAGES[0], "--prompt", str(artifact), "--out", str(out), *WEIGHTS]
    assert main([*args, "--min-size", "64", "--score-threshold", "0.2"]) == 0
    err = capsys.readouterr().err
    assert "--min-size 64 replaces the export's min_size_test=96" in err
    assert "--score-threshold 0.2 replaces the export's score_threshold=0.05" in err
    scores = [a["score"] for a in json.loads((out / "detections.json").read_text())["annotations"]]
    assert scores and min(scores) > 0.2
    # the recorded values given explicitly change nothing, so nothing is said
    assert main([*args, "--min-size", "96", "--max-size", "128"]) == 0
    assert "note" not in capsys.readouterr().err


def test_another_base_checkpoint_is_refused_with_the_expected_hash(tmp_path, capsys):
    artifact = _prompt_artifact(tmp_path / "export")
    other = tmp_path / "other.pth"
    weights = torch.load(FIXTURE / "mini_glip.pth", weights_only=True)  # other weights: one tensor moved
    key = next(k for k, v in weights["model"].items() if v.is_floating_point())
    weights["model"][key] = weights["model"][key] + 1
    torch.save(weights, other)
    want = checkpoint_identity(FIXTURE / "mini_glip.pth")["sha256"]
    out = str(tmp_path / "out")
    assert main([IMAGES[0], "--prompt", str(artifact), "--checkpoint", str(other), "--out", out]) == 2
    err = capsys.readouterr().err
    assert "other.pth: SHA-256" in err and f"(mini_glip.pth, sha256 {want})" in err
    assert err.count("\n") == 1  # one line, no traceback


def _demo_run(run_dir: Path) -> dict:
    """The README's `python -m adapt.run` (demo task, glip_mini_pretrained, prompt tuning, 5 shots),
    two steps. Its export names the packaged checkpoint, which predict finds without a download.

    The run keeps every candidate (threshold 0, not the default 0.05): predict must take that
    setting from the export to agree.
    """
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(Path(adapt.__file__).parent / "conf"), version_base="1.3"):
        overrides = ["trainer=debug", "logger=none", "model.arch.inference.score_threshold=0.0"]
        cfg = compose(config_name="config", overrides=overrides)
    want = ("demo", "glip_mini_pretrained", "prompt", 5)
    assert (cfg.task.id, cfg.model.name, cfg.mode.name, cfg.shots) == want
    assert cfg.model.arch.input.min_size_test != 800  # the demo tests at the tiles' own size
    run_job(cfg, run_dir=run_dir)
    return json.loads((run_dir / "results.json").read_text())


def _by_image(results: list[dict]) -> dict[int, list[tuple[float, int, list[float]]]]:
    per: dict[int, list] = {}
    for r in results:
        per.setdefault(r["image_id"], []).append((r["score"], r["category_id"], r["bbox"]))
    return {k: sorted(v, key=lambda d: -d[0]) for k, v in per.items()}


def _assert_same_detections(got: list[dict], want: list[dict]) -> None:
    """Same count and labels per image, scores within 1e-5, boxes within 1e-3 px: both files round
    to 3 decimals, so a box that differs in its last float bits may round one step apart."""
    a, b = _by_image(got), _by_image(want)
    assert a.keys() == b.keys()
    for image_id in b:
        assert len(a[image_id]) == len(b[image_id]), image_id
        assert sorted(d[1] for d in a[image_id]) == sorted(d[1] for d in b[image_id])
        for x, y in zip(a[image_id], b[image_id], strict=True):
            assert abs(x[0] - y[0]) <= 1e-5
            assert max(abs(u - v) for u, v in zip(x[2], y[2], strict=True)) <= 1e-3 + 1e-9


def test_an_export_reproduces_its_runs_test_detections_and_ap(tmp_path):
    """Issue 15: `python -m adapt.predict --prompt <export>` with no other flag, and
    Detector.from_export, give the demo run's own test detections and its AP."""
    results = _demo_run(tmp_path / "run")
    export = results["export"]
    run_detections = json.loads((tmp_path / "run" / TEST_DETECTIONS).read_text())
    assert run_detections, "the demo run detected nothing: nothing to compare"
    gt_file = DEMO / "annotations" / "test.json"
    gt = json.loads(gt_file.read_text())
    images = [str(DEMO / "images" / im["file_name"]) for im in gt["images"]]
    image_ids = [im["id"] for im in gt["images"]]
    category_ids = [c["id"] for c in gt["categories"]]

    out = tmp_path / "predicted"
    proc = subprocess.run(
        [sys.executable, "-m", "adapt.predict", *images, "--prompt", export, "--out", str(out)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(adapt.__file__).parent.parent)},  # this checkout's
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "note" not in proc.stderr
    by_cli = [
        {**a, "image_id": image_ids[a["image_id"] - 1], "category_id": category_ids[a["category_id"] - 1]}
        for a in json.loads((out / "detections.json").read_text())["annotations"]
    ]
    by_api = [
        {
            "image_id": image_id,
            "category_id": category_ids[int(label) - 1],
            "bbox": [round(v, 3) for v in box],
            "score": float(score),
        }
        for image_id, det in zip(image_ids, Detector.from_export(export).predict(images), strict=True)
        for box, score, label in zip(coco_xywh(det.boxes).tolist(), det.scores, det.labels, strict=True)
    ]
    for predicted in (by_cli, by_api):
        _assert_same_detections(predicted, run_detections)
        assert evaluate(gt_file, predicted)["ap"] == results["test"]["ap"]
    # Issue 24 item 15: the CLI's default batch is the run's evaluation batch size, which the export
    # records (padding depends on it); item 14: detections.json scores as it is, matched by file name.
    assert json.loads((Path(export) / "adapter_config.json").read_text())["eval_batch_size"] == 4
    assert evaluate(gt_file, out / "detections.json")["ap"] == results["test"]["ap"]


# ------------------------------------------------------------------------------------------------
# What predict writes: never over an input, one drawn copy per input, folders expanded


def test_predict_never_overwrites_an_input_and_same_stems_get_distinct_copies(tmp_path):
    """Issue 24 item 1: `--out .` beside `a.jpg` re-encoded the user's image in place, and
    `d1/x.jpg d2/x.jpg` left one drawn `x.jpg`."""
    here = tmp_path / "a.jpg"
    here.write_bytes(Path(IMAGES[0]).read_bytes())
    (tmp_path / "d1").mkdir()
    (tmp_path / "d2").mkdir()
    (tmp_path / "d1" / "x.jpg").write_bytes(Path(IMAGES[0]).read_bytes())  # 320 x 320
    (tmp_path / "d2" / "x.jpg").write_bytes(Path(IMAGES[1]).read_bytes())  # 400 x 400
    inputs = [here, tmp_path / "d1" / "x.jpg", tmp_path / "d2" / "x.jpg"]
    before = {p: p.read_bytes() for p in inputs}
    args = [*map(str, inputs), "--classes", "tree", "--threshold", "0", "--out", str(tmp_path), *COMMON]
    assert main(args) == 0
    assert {p: p.read_bytes() for p in inputs} == before
    coco = json.loads((tmp_path / "detections.json").read_text())
    assert [i["drawn"] for i in coco["images"]] == ["a-2.jpg", "x.jpg", "x-2.jpg"]
    for image, size in zip(coco["images"], [(320, 320), (320, 320), (400, 400)], strict=True):
        with Image.open(tmp_path / image["drawn"]) as im:
            assert im.size == size
    # the same command again replaces its own drawn copies, still never an input
    assert main(args) == 0
    assert {p: p.read_bytes() for p in inputs} == before
    assert sorted(p.name for p in tmp_path.glob("*.jpg")) == ["a-2.jpg", "a.jpg", "x-2.jpg", "x.jpg"]


def test_a_folder_of_images_is_expanded_in_name_order(tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name, src in (("b.jpg", IMAGES[1]), ("a.JPG", IMAGES[0])):
        (folder / name).write_bytes(Path(src).read_bytes())
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    assert main([str(folder), "--classes", "tree", "--out", str(out), *COMMON]) == 0
    coco = json.loads((out / "detections.json").read_text())
    assert [i["file_name"] for i in coco["images"]] == [str(folder / "a.JPG"), str(folder / "b.jpg")]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty), "--classes", "tree", "--out", str(out), *COMMON]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"adapt.predict: error: {empty}: a folder with no image files in it")
    assert err.count("\n") == 1


def test_predict_help_says_what_it_writes(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for said in ("detections.json", "<stem>.jpg", "no input is ever overwritten", "folder", "file name"):
        assert said in text, said
    assert "evaluation batch size" in text  # --batch-size: what reproduces the run's detections
