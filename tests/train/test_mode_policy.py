"""A mode is one class plus one YAML file: a mode defined only here (bias tuning of the head) runs a
job end to end, exports, reloads through Detector.from_export and titles its report table."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
import yaml
from train_helpers import compose_job, mini_model, mode_cfg

import adapt
from adapt.detector import Detector
from adapt.export import load_export
from adapt.metrics.coco import coco_xywh, evaluate
from adapt.model import GLIP
from adapt.modes import FROZEN_TRUNK, ModePolicy, build_policy, policy_for_export, register_mode
from adapt.report import build_report, render_markdown
from adapt.runs.job import TEST_DETECTIONS, run_job

DEMO = Path(adapt.__file__).parent / "data" / "demo"


@register_mode("headbias")
class HeadBiasTuning(ModePolicy):
    """BitFit-style: only the head's biases train; backbone and BERT frozen in eval mode."""

    label = "head bias tuning"
    eval_modules = FROZEN_TRUNK

    def __init__(self, skip: Sequence[str] = ()) -> None:
        super().__init__()
        self.skip = list(skip)  # from the YAML's policy node, like any _target_ argument

    def trains_parameter(self, name: str, model: GLIP) -> bool:
        return name.startswith("head.") and name.endswith(".bias") and not any(s in name for s in self.skip)


TARGET = f"{HeadBiasTuning.__module__}.{HeadBiasTuning.__qualname__}"


def _write_mode(conf: Path, name: str, target: str) -> None:
    """conf/mode/<name>.yaml of a config dir put on Hydra's search path: the whole mode definition."""
    (conf / "mode").mkdir(parents=True, exist_ok=True)
    mode = {
        "name": name,
        "policy": {"_target_": target, "skip": ["cls_logits"]},
        "optimizer": {
            "_target_": "adapt.train.optim.adamw",
            "_partial_": True,
            "lr": 0.05,
            "weight_decay": 0.0,
            "bias_lr_factor": 1.0,
            "bias_weight_decay": 0.0,
        },
    }
    (conf / "mode" / f"{name}.yaml").write_text(yaml.safe_dump(mode))


def _head_biases(model: GLIP) -> list[str]:
    return [
        n
        for n, _ in model.named_parameters()
        if HeadBiasTuning(skip=["cls_logits"]).trains_parameter(n, model)
    ]


def test_a_mode_defined_outside_the_package_runs_exports_reloads_and_is_reported(tmp_path):
    conf = tmp_path / "conf"
    _write_mode(conf, "headbias", TARGET)
    cfg = compose_job(f"hydra.searchpath=[file://{conf}]", "mode=headbias", "shots=1", "trainer.max_steps=2")
    policy = build_policy(cfg.mode)
    assert type(policy) is HeadBiasTuning and policy.skip == ["cls_logits"]

    run_dir = tmp_path / "sweep" / "run"
    ap = run_job(cfg, run_dir=run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "complete" and results["mode"] == "headbias"
    assert results["mode_label"] == "head bias tuning" and results["test"]["ap"] == ap
    want = _head_biases(mini_model())
    assert want and results["params"]["trainable"] == sum(
        p.numel() for n, p in mini_model().named_parameters() if n in want
    )

    # The export: the default two-file layout, the trained biases under adapt names, the class recorded.
    export = load_export(results["export"])
    # The export names the policy by its registered name, never by an import path.
    assert export.config["policy"] == "headbias" and export.peft_config is None
    assert sorted(export.tensors) == sorted(want)
    assert isinstance(policy_for_export(export.policy_name), HeadBiasTuning)

    detector = Detector.from_export(results["export"], checkpoint=cfg.get("checkpoint") or None)
    params = dict(detector.model.named_parameters())
    for name, value in export.tensors.items():
        assert torch.equal(params[name].detach(), value), name
    # Training moved the biases, so applying the export is what gives the run's detections.
    base = dict(mini_model(weights=cfg.get("checkpoint") is not None).named_parameters())
    assert any(not torch.equal(base[n].detach(), v) for n, v in export.tensors.items())

    gt_file = DEMO / "annotations" / "test.json"
    gt = json.loads(gt_file.read_text())
    images = [str(DEMO / "images" / im["file_name"]) for im in gt["images"]]
    category_ids = [c["id"] for c in gt["categories"]]
    predicted = [
        {
            "image_id": im["id"],
            "category_id": category_ids[int(label) - 1],
            "bbox": box,
            "score": float(score),
        }
        for im, det in zip(gt["images"], detector.predict(images), strict=True)
        for box, score, label in zip(coco_xywh(det.boxes).tolist(), det.scores, det.labels, strict=True)
    ]
    run_detections = json.loads((run_dir / TEST_DETECTIONS).read_text())
    assert run_detections and len(predicted) == len(run_detections)
    assert evaluate(gt_file, predicted)["ap"] == pytest.approx(ap, abs=1e-6)

    report = build_report(tmp_path / "sweep")
    assert "### head bias tuning (`mode=headbias`)" in render_markdown(report)


def test_a_mode_yaml_naming_no_policy_class_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"mode\.policy\._target_='torch\.nn\.Identity' is not a ModePolicy"):
        build_policy({"name": "odd", "policy": {"_target_": "torch.nn.Identity"}})
    with pytest.raises(ValueError, match=r"mode\.policy\._target_='nowhere\.Mode' cannot be built"):
        build_policy({"name": "odd", "policy": {"_target_": "nowhere.Mode"}})
    known = r"mode policy 'odd' is not registered \(known: .*full, fusion_prompt, headbias, "
    with pytest.raises(ValueError, match=known):
        build_policy({"name": "odd"})


def test_the_built_in_modes_are_registered_by_name():
    for name, cls in [("zero", "ZeroShot"), ("prompt", "PromptTuning"), ("lora", "LoRA")]:
        policy = build_policy(mode_cfg(name))
        assert type(policy).__name__ == cls and policy.name == name
    assert not build_policy({"name": "zero"}).trains and build_policy({"name": "full"}).trains


@pytest.mark.parametrize("mode", ["prompt", "linear", "lora"])
def test_older_exports_still_apply_by_the_name_their_metadata_meant(tmp_path, mode):
    """Format 2 recorded the built-in policy as a class path, format 1 only the mode: both resolve
    to the registered policy without importing the path."""
    from test_export import CHECKPOINT, make_export

    out = make_export(tmp_path / mode, mode)
    meta = out / ("adapt_export.json" if mode == "lora" else "adapter_config.json")
    config = json.loads(meta.read_text())
    assert config["policy"] == mode
    new = Detector.from_export(out, checkpoint=CHECKPOINT)
    cls = type(build_policy(mode_cfg(mode))).__name__
    for legacy in ({"policy": f"adapt.train.modes.{cls}", "version": 2}, {"policy": None, "version": 1}):
        old_config = {k: v for k, v in {**config, **legacy}.items() if v is not None}
        meta.write_text(json.dumps(old_config))
        old = Detector.from_export(out, checkpoint=CHECKPOINT)
        assert type(policy_for_export(load_export(out).policy_name)) is type(build_policy(mode_cfg(mode)))
        assert (old.model.language_backbone is None) == (mode == "prompt")
        want = dict(new.model.named_parameters())
        got = dict(old.model.named_parameters())
        assert want.keys() == got.keys() and all(torch.equal(want[n], got[n]) for n in want)
