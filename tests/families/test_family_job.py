"""`python -m adapt.run model=<family>_mini mode=...` on the embedded demo: every mode of every family
completes, exports reproduce their runs through `adapt.predict --prompt`, exports are refused on
other weights, and an interrupted run resumes to the uninterrupted result."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from safetensors.torch import load_file

import adapt
from adapt.families import build_family, family_model_config
from adapt.predict import main as predict
from adapt.runs.job import TEST_DETECTIONS, run_job
from adapt.train.family_module import FamilyAdaptation
from tests.families.conftest import ALL

CONF = Path(adapt.__file__).parent / "conf"
DEMO = Path(adapt.__file__).parent / "data" / "demo"
MODES = ["zero", "prompt", "linear", "full", "lora"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))


def compose_job(model: str, *overrides: str):
    """The job config as `python -m adapt.run model=<model>` composes it (one step, CPU, no logger)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            config_name="config",
            overrides=["trainer=debug", "logger=none", "data.num_workers=0", f"model={model}", *overrides],
        )


def read(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


@pytest.mark.parametrize("model", ALL)
@pytest.mark.parametrize("mode", MODES)
def test_every_mode_trains_on_the_demo(tmp_path: Path, model: str, mode: str):
    shots = "shots=0" if mode == "zero" else "shots=1"
    ap = run_job(compose_job(model, f"mode={mode}", shots, "trainer.max_steps=1"), run_dir=tmp_path)
    results = read(tmp_path)
    assert results["status"] == "complete" and results["model"] == model and results["mode"] == mode
    assert results["test"]["ap"] == ap and set(results["test"]["per_category"]) == {"tree"}
    assert results["checkpoint"]["family"] == family_model_config(model).family
    assert len(results["checkpoint"]["weights_sha256"]) == 64
    params = results["params"]
    if mode == "zero":
        assert params["trainable"] == 0 and not (tmp_path / "export").exists()
        return
    assert 0 < params["trainable"] <= params["total"] and results["best_step"] == 1
    export = tmp_path / "export"
    meta = json.loads(
        (export / ("adapt_export.json" if mode == "lora" else "adapter_config.json")).read_text()
    )
    assert meta["mode"] == mode and meta["policy"] == mode and meta["base_model"]["name"] == model
    assert meta["base_model"]["weights"] == results["checkpoint"]
    if mode == "lora":  # peft's own format beside adapt's metadata
        peft_config = json.loads((export / "adapter_config.json").read_text())
        assert peft_config["peft_type"] == "LORA" and peft_config["inference_mode"] is True
        assert all(k.startswith("base_model.model.") for k in load_file(export / "adapter_model.safetensors"))


def _run(tmp_path: Path, model: str, mode: str, *extra: str) -> Path:
    run_dir = tmp_path / f"{model}-{mode}"
    run_job(compose_job(model, f"mode={mode}", "shots=1", "trainer.max_steps=2", *extra), run_dir=run_dir)
    return run_dir


def _by_image(results: list[dict]) -> dict[int, list[tuple[float, int, list[float]]]]:
    per: dict[int, list] = {}
    for r in results:
        per.setdefault(r["image_id"], []).append((r["score"], r["category_id"], r["bbox"]))
    return {k: sorted(v, key=lambda d: (-d[0], d[2])) for k, v in per.items()}


def _predicted(out: Path) -> list[dict]:
    """predict's COCO file in the run's ids (the demo's test images, in the test file's order)."""
    gt = json.loads((DEMO / "annotations" / "test.json").read_text())
    ids, cats = [im["id"] for im in gt["images"]], [c["id"] for c in gt["categories"]]
    return [
        {**a, "image_id": ids[a["image_id"] - 1], "category_id": cats[a["category_id"] - 1]}
        for a in json.loads((out / "detections.json").read_text())["annotations"]
    ]


@pytest.mark.parametrize(("model", "mode"), [("grounding_dino_mini", "prompt"), ("owlv2_mini", "prompt")])
def test_an_export_reproduces_its_runs_test_detections_through_predict(tmp_path: Path, model: str, mode: str):
    """`python -m adapt.predict IMAGES --prompt <run>/export`, no other flag: the run's own detections."""
    run_dir = _run(tmp_path, model, mode)
    gt = json.loads((DEMO / "annotations" / "test.json").read_text())
    images = [str(DEMO / "images" / im["file_name"]) for im in gt["images"]]
    out = tmp_path / "predicted"
    assert predict([*images, "--prompt", str(run_dir / "export"), "--out", str(out)]) == 0
    want = _by_image(json.loads((run_dir / TEST_DETECTIONS).read_text()))
    got = _by_image(_predicted(out))
    assert want and got.keys() == want.keys()
    for image_id, dets in want.items():
        assert len(got[image_id]) == len(dets)
        for (s1, c1, b1), (s2, c2, b2) in zip(got[image_id], dets, strict=True):
            assert abs(s1 - s2) <= 1e-5 and c1 == c2
            assert max(abs(u - v) for u, v in zip(b1, b2, strict=True)) <= 1e-3


def test_an_export_is_refused_on_other_weights(tmp_path: Path, capsys: pytest.CaptureFixture):
    run_dir = _run(tmp_path, "grounding_dino_mini", "linear")
    recorded = read(run_dir)["checkpoint"]["weights_sha256"]
    other = build_family(replace(family_model_config("grounding_dino_mini"), seed=1))
    folder = tmp_path / "other"
    other.save_pretrained(folder)
    image = str(DEMO / "images" / "osbs_029.jpg")
    args = [
        image,
        "--prompt",
        str(run_dir / "export"),
        "--checkpoint",
        str(folder),
        "--out",
        str(tmp_path / "o"),
    ]
    assert predict(args) == 2
    err = capsys.readouterr().err
    [line] = [line for line in err.splitlines() if "adapt.predict" in line]  # one line, no traceback
    assert f"SHA-256 {recorded}" in line and other.identity["weights_sha256"] in line
    assert "Traceback" not in err
    # The same weights saved to a folder are accepted: the digest is of the values, not the file.
    same = tmp_path / "same"
    build_family("grounding_dino_mini").save_pretrained(same)
    args = [
        image,
        "--prompt",
        str(run_dir / "export"),
        "--checkpoint",
        str(same),
        "--out",
        str(tmp_path / "s"),
    ]
    assert predict(args) == 0


def test_resume_after_an_interruption_reaches_the_uninterrupted_result(tmp_path: Path, monkeypatch):
    overrides = ("trainer.max_steps=-1", "trainer.max_epochs=2", "seed=5")
    straight = _run(tmp_path / "straight", "grounding_dino_mini", "prompt", *overrides)
    original = FamilyAdaptation.on_train_batch_start

    def crash_in_second_period(self, batch, batch_idx):
        if self.current_epoch == 1:
            raise KeyError("simulated crash")
        original(self, batch, batch_idx)

    monkeypatch.setattr(FamilyAdaptation, "on_train_batch_start", crash_in_second_period)
    with pytest.raises(KeyError, match="simulated crash"):
        _run(tmp_path / "resumed", "grounding_dino_mini", "prompt", *overrides)
    monkeypatch.setattr(FamilyAdaptation, "on_train_batch_start", original)
    resumed = _run(tmp_path / "resumed", "grounding_dino_mini", "prompt", *overrides, "resume=auto")
    a, b = read(straight), read(resumed)
    assert b["status"] == "complete" and b["resumed"] and not a["resumed"]
    assert [(h["step"], h["ap"]) for h in a["val_history"]] == [
        (h["step"], h["ap"]) for h in b["val_history"]
    ]
    assert a["test"] == b["test"]
    ta = load_file(straight / "export" / "adapter_model.safetensors")
    tb = load_file(resumed / "export" / "adapter_model.safetensors")
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_a_grounding_task_is_refused_for_a_family_by_name():
    from adapt.runs.config import ConfigError, check_config

    cfg = compose_job("grounding_dino_mini", "task=flickr30k", "mode=zero", "shots=0")
    with pytest.raises(ConfigError, match=r"model=grounding_dino_mini is a detector family .*task=Flickr30k"):
        check_config(cfg)
    check_config(compose_job("grounding_dino_mini", "mode=zero", "shots=0"))  # detection: accepted


@pytest.mark.parametrize("mode", ["fusion_prompt", "context_prompt", "zero_ensemble"])
def test_a_glip_only_method_is_refused_for_a_family_by_name(mode: str):
    from adapt.runs.config import ConfigError, check_config

    shots = "shots=0" if mode == "zero_ensemble" else "shots=1"
    with pytest.raises(
        ConfigError, match=rf"model=owlv2_mini: mode '{mode}' .* cannot run on a detector family"
    ):
        check_config(compose_job("owlv2_mini", f"mode={mode}", shots))
