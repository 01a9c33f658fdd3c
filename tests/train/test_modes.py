"""Each mode trains exactly the official parameter set and leaves modules in the official modes."""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch
from train_helpers import FIXTURE, mini_model, mode_cfg

from adapt.model import GLIP, GLIPConfig, official_name
from adapt.modes import build_policy, module_training_flags
from adapt.prompt import encode_prompt, load_tokenizer
from adapt.train.module import GLIPAdaptation
from adapt.train.optim import adamw, param_groups

ORACLE = json.loads((FIXTURE / "requires_grad_modes.json").read_text())
OFFICIAL = {"full": "full", "linear": "linear_prob", "prompt": "language_prompt_v2"}
MODE_CFG = {
    "zero": {"name": "zero"},
    "prompt": {"name": "prompt"},
    "linear": {"name": "linear"},
    "full": {"name": "full"},
    "lora": mode_cfg("lora"),
}


def official_names(names: list[str]) -> set[str]:
    return {official_name(n) for n in names}


@pytest.mark.parametrize("mode", ["full", "linear", "prompt"])
def test_mini_trainable_set_and_module_modes_match_the_oracle(mode: str):
    oracle = ORACLE[f"mini/{OFFICIAL[mode]}"]
    model = mini_model(freeze_at=-1)  # the fixture's FREEZE_CONV_BODY_AT
    trainable = build_policy({"name": mode}).apply(model)
    assert official_names(trainable) == set(oracle["trainable"])
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if mode == "prompt":  # official tunable_linear has 1000 rows; only the first 256 are ever read
        assert count == 256 * model.cfg.language.hidden_size
    else:
        assert count == oracle["n_params_trainable"]
    module = GLIPAdaptation(model, build_policy({"name": mode}), _prompt())
    module.train()
    flags = {k: v for k, v in oracle["module_training_flags_after_model.train()"].items() if k != "rpn"}
    assert module_training_flags(model) == flags


def test_full_with_freeze_at_2_drops_exactly_patch_embedding_and_stage_1():
    free = build_policy({"name": "full"}).apply(mini_model(freeze_at=-1))
    frozen = build_policy({"name": "full"}).apply(model := mini_model(freeze_at=2))
    dropped = official_names(free) - official_names(frozen)
    assert dropped and all(
        n.startswith(("backbone.body.patch_embed.", "backbone.body.layers.0.")) for n in dropped
    )
    stage1 = {official_name(n) for n, _ in model.named_parameters()}
    assert {
        n for n in stage1 if n.startswith(("backbone.body.patch_embed.", "backbone.body.layers.0."))
    } == dropped
    model.train()
    assert not model.backbone.body.swin.embeddings.training
    assert not model.backbone.body.swin.encoder.layers[0].training
    assert model.backbone.body.swin.encoder.layers[1].training


@pytest.mark.parametrize("mode", ["full", "linear", "prompt"])
def test_glipt_trainable_names_match_the_oracle(mode: str):
    oracle = ORACLE[f"glipt/{OFFICIAL[mode]}"]
    cfg = GLIPConfig.from_dict({"swin": {"freeze_at": -1}})
    with torch.device("meta"):  # names only: no memory, no init time
        model = GLIP(cfg)
    trainable = build_policy({"name": mode}).apply(model)
    assert official_names(trainable) == set(oracle["trainable"])
    if mode != "prompt":
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) == oracle["n_params_trainable"]


def test_lora_trains_only_adapters_and_zero_trains_nothing():
    model = mini_model()
    trainable = build_policy(MODE_CFG["lora"]).apply(model)
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split(".lora_")[0] for n in trainable} == {
        f"head.dyhead_tower.{i}.b_attn.attn.{p}" for i in (0, 3) for p in ("v_proj", "l_proj")
    }
    assert build_policy({"name": "zero"}).apply(mini_model()) == []


def test_param_groups_follow_the_official_lr_and_decay_rules():
    model = mini_model()
    build_policy({"name": "full"}).apply(model)
    opt = {"lr": 1e-4, "weight_decay": 0.05, "bias_lr_factor": 2.0, "bias_weight_decay": 0.0, "lang_lr": 1e-5}
    got = {n: (g["lr"], g["weight_decay"]) for g in param_groups(model, opt) for n in g["names"]}
    assert got["language_backbone.encoder.layer.0.attention.self.query.weight"] == (1e-5, 0.05)
    assert got["language_backbone.encoder.layer.0.attention.self.query.bias"] == (2e-5, 0.0)
    assert got["head.bias_lang"] == (2e-4, 0.0) and got["head.bias0"] == (2e-4, 0.0)
    assert got["head.log_scale"] == (1e-4, 0.05)
    assert got["head.dyhead_tower.1.attention.self.query.weight"] == (1e-4, 0.05)  # head BERT: base lr
    assert "head.cls_logits.weight" not in got


def _prompt():
    return encode_prompt(["fish", "jellyfish", "penguin"], load_tokenizer())


def _batch():
    torch.manual_seed(0)
    prompt = _prompt()
    images = torch.randn(2, 3, 64, 64)
    boxes = [torch.tensor([[4.0, 6.0, 40.0, 50.0]]), torch.tensor([[30.0, 10.0, 62.0, 58.0]])]
    targets = [
        {"boxes": b, "labels": torch.tensor([k + 1]), "positive_map": prompt.positive_map([k + 1])}
        for k, b in enumerate(boxes)
    ]
    return prompt, {"images": images, "image_sizes": [(64, 64), (60, 64)], "targets": targets}


@pytest.mark.parametrize("mode", ["prompt", "linear", "full", "lora"])
def test_one_optimizer_step_changes_exactly_the_trainable_tensors(mode: str):
    prompt, batch = _batch()
    model = mini_model(weights=True, freeze_at=2)
    module = GLIPAdaptation(
        model, build_policy(MODE_CFG[mode]), prompt, optimizer=partial(adamw, lr=1e-3, weight_decay=0.05)
    )
    module.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = module.configure_optimizers()
    loss = module.training_step(batch, 0)
    assert loss is not None and torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed == set(module.trainable)


def test_prompt_mode_keeps_every_module_in_eval_mode_and_runs_bert_once(monkeypatch: pytest.MonkeyPatch):
    model = mini_model()
    module = GLIPAdaptation(model, build_policy({"name": "prompt"}), _prompt())
    module.train()
    networks = ("backbone", "language_backbone", "head")
    assert [n for n, m in model.named_modules() if m.training and n.startswith(networks)] == []
    calls = []
    bert = model.language_backbone
    original = bert.forward
    monkeypatch.setattr(bert, "forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    for _ in range(2):
        module.text_features(2)
    assert len(calls) == 1
