"""The three methods as modes (adapt.modes.fusion_prompt, .context_prompt, .zero_ensemble): trainable
sets, gradients, no-ops against zero-shot, exports that reload through Detector.from_export, the
sweep rule and the report."""

from __future__ import annotations

import json
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest
import torch
from train_helpers import CONF, FIXTURE, compose_job, mini_model

import adapt
from adapt.detector import Detector
from adapt.export import checkpoint_identity, load_export, model_identity
from adapt.grid import GridPoint, point_skip_reason
from adapt.modes import (
    ContextPromptTuning,
    FusionPromptTuning,
    InferenceText,
    PromptEnsemble,
    build_policy,
    export_run,
    policy_for_export,
)
from adapt.prompt import encode_prompt, load_tokenizer
from adapt.runs.config import ConfigError, check_config
from adapt.runs.sweep import evaluates_only
from adapt.train.module import GLIPAdaptation
from adapt.train.optim import adamw

CLASSES = ["fish", "jellyfish", "penguin"]
DEMO = Path(adapt.__file__).parent / "data" / "demo"
IMAGES = [str(DEMO / "images" / "yell_r0_c0.jpg")]
CHECKPOINT = FIXTURE / "mini_glip.pth"


def _policy(mode: str, **settings):
    return build_policy({"name": mode, "policy": {"_target_": _TARGETS[mode], **settings}})


# What the shipped YAMLs instantiate (configuration); exports record the registered names.
_TARGETS = {
    "fusion_prompt": "adapt.modes.FusionPromptTuning",
    "context_prompt": "adapt.modes.ContextPromptTuning",
    "zero_ensemble": "adapt.modes.PromptEnsemble",
}


def _mini():
    """The fixture's mini GLIP with its checkpoint, built afresh (a deep copy of a GLIP does not
    reproduce its detections bit for bit, so every model here is loaded)."""
    return mini_model(weights=True)


def _module(mode: str, classes=CLASSES, **settings) -> GLIPAdaptation:
    """A module over the fixture's mini GLIP, its prompt laid out by the policy (as the job does)."""
    model = _mini()
    for key, value in {"min_size_test": 96, "max_size_test": 128}.items():
        setattr(model.cfg.input, key, value)  # recorded by the export: predict resizes alike
    policy = _policy(mode, **settings)
    prompt = policy.encode_prompt(classes, load_tokenizer())
    optimizer = partial(adamw, lr=1e-2, weight_decay=0.0)
    return GLIPAdaptation(model, policy, prompt, optimizer=optimizer if policy.trains else None)


def _batch(module: GLIPAdaptation) -> dict:
    torch.manual_seed(0)
    boxes = [torch.tensor([[4.0, 6.0, 40.0, 50.0]]), torch.tensor([[30.0, 10.0, 62.0, 58.0]])]
    targets = [
        {"boxes": b, "labels": torch.tensor([k + 1]), "positive_map": module.prompt.positive_map([k + 1])}
        for k, b in enumerate(boxes)
    ]
    return {"images": torch.randn(2, 3, 64, 64), "image_sizes": [(64, 64), (60, 64)], "targets": targets}


def _detect(module: GLIPAdaptation, image: torch.Tensor) -> list[dict]:
    """The module's evaluation detections (its policy's ``detect``, as validation runs it)."""
    module.eval()
    with torch.no_grad():
        text = module.text_features(1)
        return module.policy.detect(module.model, image, [tuple(image.shape[-2:])], text, module.prompt)


def _zero_shot(image: torch.Tensor, prompt) -> list[dict]:
    model = _mini().eval()
    with torch.no_grad():
        return model(
            image, [tuple(image.shape[-2:])], input_ids=prompt.input_ids[None],
            attention_mask=prompt.attention_mask[None], label_to_tokens=prompt.label_to_tokens,
        )  # fmt: skip


def _equal(a: list[dict], b: list[dict]) -> bool:
    return all(torch.equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in x)


def test_the_modes_yaml_select_the_classes_and_their_settings():
    for name, cls in [
        ("fusion_prompt", FusionPromptTuning),
        ("context_prompt", ContextPromptTuning),
        ("zero_ensemble", PromptEnsemble),
    ]:
        assert type(build_policy({"name": name})) is cls
    cfg = compose_job("mode=fusion_prompt", "mode.policy.num_tokens=8", "mode.policy.layers=[1]")
    policy = build_policy(cfg.mode)
    assert (policy.num_tokens, policy.layers, policy.init) == (8, [1], "uniform")
    assert (
        not build_policy({"name": "zero_ensemble"}).trains and build_policy({"name": "zero_ensemble"}).exports
    )
    with pytest.raises(ValueError, match=r"mode.policy.num_tokens=0 must be an integer of at least 1"):
        _policy("fusion_prompt", num_tokens=0)
    with pytest.raises(ValueError, match=r"must contain exactly one \{\}"):
        _policy("zero_ensemble", templates=["a photo"])


FUSION = "head.dyhead_tower.{}.b_attn.attn.fusion_prompt.tokens"


@pytest.mark.parametrize(
    ("mode", "settings", "names", "count"),
    [
        ("fusion_prompt", {"num_tokens": 5}, [FUSION.format(0), FUSION.format(3)], 2 * 5 * 2048),
        ("fusion_prompt", {"num_tokens": 7, "layers": [1]}, [FUSION.format(3)], 7 * 2048),
        ("context_prompt", {"length": 4}, ["context_prompt.context"], 4 * 64),
        ("context_prompt", {"length": 2, "class_specific": True}, ["context_prompt.context"], 3 * 2 * 64),
        ("zero_ensemble", {}, [], 0),
    ],
)
def test_trainable_sets_and_module_modes(mode, settings, names, count):
    module = _module(mode, **settings)
    assert module.trainable == names
    assert sum(p.numel() for p in module.model.parameters() if p.requires_grad) == count
    module.train()  # backbone, BERT and head frozen in eval mode, as in GLIP's prompt tuning
    networks = ("backbone", "language_backbone", "head")
    assert [n for n, m in module.model.named_modules() if m.training and n.startswith(networks)] == []


@pytest.mark.parametrize("mode", ["fusion_prompt", "context_prompt"])
def test_gradients_reach_only_the_methods_parameters(mode):
    module = _module(mode, **({"num_tokens": 3} if mode == "fusion_prompt" else {}))
    model = module.model
    module.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = module.configure_optimizers()
    loss = module.training_step(_batch(module), 0)
    assert loss is not None and torch.isfinite(loss)
    loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == set(module.trainable)
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed == set(module.trainable)


def test_context_tokens_run_bert_every_step_and_never_reuse_its_output():
    module = _module("context_prompt")
    assert not module.text_cached()  # the context trains: BERT's output changes with it
    frozen = _module("zero_ensemble")
    assert frozen.text_cached()


def test_no_op_context_and_one_member_ensemble_detect_exactly_like_zero_shot():
    """Zero context tokens is the plain task caption; context initialised from words is the caption
    written with them; an ensemble of the task's own caption alone is the plain model."""
    tok = load_tokenizer()
    torch.manual_seed(0)
    image = torch.randn(1, 3, 64, 64)
    plain = encode_prompt(CLASSES, tok)
    zero_shot = _zero_shot(image, plain)
    assert len(zero_shot[0]["scores"]) > 0

    empty = _module("context_prompt", length=0, init_words=None)
    assert empty.prompt.caption == plain.caption and empty.trainable == ["context_prompt.context"]
    assert _equal(_detect(empty, image), zero_shot)

    worded = _module("context_prompt", length=4, init_words="a photo of a")
    written = encode_prompt([f"a photo of a {c}" for c in CLASSES], tok)
    assert worded.prompt.caption == written.caption
    assert _equal(_detect(worded, image), _zero_shot(image, worded.prompt))

    alone = _module("zero_ensemble", templates=[], task_prompt=True)
    assert _equal(_detect(alone, image), zero_shot)
    several = _module("zero_ensemble")
    assert len(several.policy.prompts) == 4
    assert (
        several.policy.prompts[1].caption == "a photo of a fish. a photo of a jellyfish. a photo of a penguin"
    )
    assert not _equal(_detect(several, image), zero_shot)


@pytest.mark.parametrize("mode", ["fusion_prompt", "context_prompt", "zero_ensemble"])
def test_the_export_reloads_through_the_detector_with_no_other_argument(tmp_path, mode):
    module = _module(mode, **({"num_tokens": 3} if mode == "fusion_prompt" else {}))
    if module.policy.trains:  # one step, so the export differs from the untrained method
        module.train()
        optimizer = module.configure_optimizers()
        module.training_step(_batch(module), 0).backward()
        optimizer.step()
    model = module.model.eval()
    identity = model_identity(model, "glip_mini", checkpoint_identity(CHECKPOINT))
    out = export_run(
        tmp_path / "export", model, module.policy, module.trainable_state_dict(), module.prompt, identity
    )
    export = load_export(out)
    assert export.mode == mode and export.policy_name == mode  # a registered name, never a class path
    assert _TARGETS[mode] not in (out / "adapter_config.json").read_text()

    reference = Detector(model)  # the run's own model and caption(s)
    members = tuple(module.policy.prompts) if mode == "zero_ensemble" else ()
    reference.export_text = InferenceText(module.prompt, ensemble=members)
    want = reference.predict(IMAGES, batch_size=1)
    detector = Detector.from_export(out, checkpoint=CHECKPOINT)
    assert (detector.model.language_backbone is None) == (mode == "context_prompt")  # no text encoder
    got = detector.predict(IMAGES, batch_size=1)
    assert sum(len(d) for d in want) > 0
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a.labels, b.labels)
        torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=1e-5)
        torch.testing.assert_close(a.boxes, b.boxes, rtol=0, atol=1e-3)
    if mode != "zero_ensemble":  # the learned tensors are back on a model that has a text encoder
        model2 = _mini()
        policy_for_export(export.policy_name).apply_export(export, model2)
        params = dict(model2.named_parameters())
        assert all(torch.equal(params[n], export.tensors[n]) for n in module.trainable)


def test_the_ensemble_evaluates_once_per_task_and_model_in_a_sweep_by_its_yaml():
    """``evaluates_only: true`` (conf/mode/zero_ensemble.yaml) gives it the zero-shot rule; the job
    checks the flag against the policy, and the two training methods train from one shot on."""
    cfg = compose_job("mode=zero_ensemble", "shots=0")
    assert evaluates_only(cfg) is True
    check_config(cfg)
    run = GridPoint("odinw/aquarium", "glip_t", "zero_ensemble", 0, 3)
    assert point_skip_reason(run, evaluates_only=True) is None
    assert "once per task and model, at shots=0" in point_skip_reason(
        replace(run, shots=5), evaluates_only=True
    )
    assert "with seed 3" in point_skip_reason(replace(run, seed=30), evaluates_only=True)
    for mode in ("fusion_prompt", "context_prompt"):
        cfg = compose_job(f"mode={mode}", "shots=5")
        assert not evaluates_only(cfg)
        check_config(cfg)
        assert (
            point_skip_reason(GridPoint("odinw/aquarium", "glip_t", mode, 5, 30), evaluates_only=False)
            is None
        )
        with pytest.raises(ConfigError, match="shots=0 is zero-shot evaluation"):
            check_config(compose_job(f"mode={mode}", "shots=0"))
    with pytest.raises(ConfigError, match="contradicts mode zero_ensemble's policy"):
        check_config(compose_job("mode=zero_ensemble", "shots=0", "mode.evaluates_only=false"))


@pytest.mark.parametrize("mode", ["context_prompt", "zero_ensemble"])
def test_the_caption_methods_refuse_a_grounding_task(mode):
    """Their context and captions belong to the task's one caption; grounding samples bring their own."""
    shots = "shots=0" if mode == "zero_ensemble" else "shots=1"
    with pytest.raises(ConfigError, match=f"mode={mode} works on the task's one caption"):
        check_config(compose_job(f"mode={mode}", "task=flickr30k", shots))
    check_config(compose_job("mode=fusion_prompt", "task=flickr30k", "shots=1"))  # image side only


def test_the_report_titles_each_method_with_its_label_and_trainable_parameters(tmp_path):
    from adapt.report import build_report, render_markdown
    from tests.test_report import write_result

    for mode, label, trainable in [
        ("zero", "zero-shot", 0),
        ("fusion_prompt", "fusion prompts (SDPT)", 1_228_800),
        ("context_prompt", "context tokens (CoOp)", 3_072),
        ("zero_ensemble", "prompt ensemble (zero-shot)", 0),
    ]:
        shots = 0 if mode.startswith("zero") else 5
        for task, total in [("a", 231_780_222), ("b", 231_780_222)]:
            extra = {"mode_label": label, "params": {"trainable": trainable, "total": total}}
            write_result(tmp_path, GridPoint(task, "m", mode, shots, 3), ap=1.0 + len(mode), **extra)
    text = render_markdown(build_report(tmp_path))
    title = "### fusion prompts (SDPT) (`mode=fusion_prompt`)\n\n"
    assert title + "Trainable parameters: 1,228,800 of 231,780,222 (0.53%)." in text
    assert "### prompt ensemble (zero-shot) (`mode=zero_ensemble`)" in text
    ensemble = text.split("(`mode=zero_ensemble`)")[1]
    assert "Trainable parameters: none (evaluation only)." in ensemble
    assert "| a | 14.0 |" in ensemble  # its own zero-shot cells, not mode=zero's (5.0)


def test_the_shipped_yamls_document_their_policies():
    for name in ("fusion_prompt", "context_prompt", "zero_ensemble"):
        text = (CONF / "mode" / f"{name}.yaml").read_text()
        assert f"_target_: {_TARGETS[name]}" in text
        assert ("evaluates_only: true" in text) == (name == "zero_ensemble")
        assert type(build_policy({"name": name})).__name__ == _TARGETS[name].rsplit(".", 1)[1]


@pytest.mark.parametrize(
    ("model_name", "total", "default", "readme_example"),
    [("glip_t", 231_780_222, 1_228_800, 8_601_600), ("glip_l", 430_422_384, 1_638_400, 11_468_800)],
)
def test_trainable_counts_on_the_released_architectures(model_name, total, default, readme_example):
    """The figures docs/DESIGN.md and benchmarks/README.md quote: SDPT at its code's default (100
    tokens in every fusion layer) and at its README's example (700), CoOp's shared context."""
    from adapt.model import GLIP, GLIPConfig
    from adapt.model.config import model_config
    from adapt.model.fusion_prompt import fusion_attentions

    with torch.device("meta"):  # counts only: no memory, no init time
        model = GLIP(GLIPConfig.from_dict(model_config(model_name)["arch"]))
    assert sum(p.numel() for p in model.parameters()) == total

    def trainable(mode: str, **settings) -> int:
        for attn in fusion_attentions(model):  # the previous method off again
            attn.fusion_prompt = None
        model.context_prompt = None
        policy = _policy(mode, **settings)
        policy.encode_prompt(CLASSES, load_tokenizer())
        policy.apply(model)
        return sum(p.numel() for p in model.parameters() if p.requires_grad)

    assert trainable("fusion_prompt") == default
    assert trainable("fusion_prompt", num_tokens=700) == readme_example
    assert trainable("context_prompt", length=4) == 4 * 768
    assert trainable("context_prompt", length=4, class_specific=True) == 3 * 4 * 768


@pytest.mark.slow  # three real demo runs (tens of seconds each); run with -m slow
@pytest.mark.parametrize("mode", ["fusion_prompt", "context_prompt", "zero_ensemble"])
def test_a_demo_run_exports_what_adapt_predict_reproduces_with_no_other_flag(tmp_path, mode):
    from adapt.evaluate import evaluate
    from adapt.predict import main
    from adapt.runs.job import TEST_DETECTIONS, run_job
    from tests.test_predict import _assert_same_detections

    shots = "shots=0" if mode == "zero_ensemble" else "shots=5"
    cfg = compose_job(
        f"mode={mode}", shots, "trainer.max_steps=2", "model.arch.inference.score_threshold=0.0"
    )
    run_dir = tmp_path / "run"
    ap = run_job(cfg, run_dir=run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "complete" and results["mode"] == mode and results["test"]["ap"] == ap
    assert results["mode_label"] == build_policy({"name": mode}).label
    gt_file = DEMO / "annotations" / "test.json"
    gt = json.loads(gt_file.read_text())
    images = [str(DEMO / "images" / im["file_name"]) for im in gt["images"]]
    out = tmp_path / "predicted"
    assert main([*images, "--prompt", results["export"], "--out", str(out)]) == 0
    ids = [im["id"] for im in gt["images"]]
    cats = [c["id"] for c in gt["categories"]]
    predicted = [
        {**a, "image_id": ids[a["image_id"] - 1], "category_id": cats[a["category_id"] - 1]}
        for a in json.loads((out / "detections.json").read_text())["annotations"]
    ]
    _assert_same_detections(predicted, json.loads((run_dir / TEST_DETECTIONS).read_text()))
    assert evaluate(gt_file, predicted)["ap"] == pytest.approx(ap, abs=1e-6)
