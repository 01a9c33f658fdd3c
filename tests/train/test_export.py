"""Exported artifacts reload exactly; a prompt artifact detects without any text encoder."""

from __future__ import annotations

import json

import torch
from train_helpers import mini_model

from adapt.model import batch_images
from adapt.prompt import encode_prompt, load_tokenizer
from adapt.train.export import CONFIG_FILE, TENSORS_FILE, export_run, load_export, model_identity
from adapt.train.modes import build_policy

LORA = {"r": 2, "alpha": 4, "target_modules": r".*dyhead_tower\.\d+\.b_attn\.attn\.(v_proj|l_proj)"}


def _images():
    g = torch.Generator().manual_seed(0)
    return batch_images([torch.rand(3, 96, 128, generator=g), torch.rand(3, 128, 96, generator=g)])


def test_prompt_export_detects_identically_with_the_language_backbone_removed(tmp_path):
    prompt = encode_prompt(["fish", "jellyfish", "penguin"], load_tokenizer())
    model = mini_model(weights=True).eval()
    trainable = build_policy({"name": "prompt"}).apply(model)
    with torch.no_grad():
        model.prompt_offset.copy_(
            0.1 * torch.randn(model.prompt_offset.shape, generator=torch.Generator().manual_seed(7))
        )
    images, sizes = _images()
    ids, mask = prompt.input_ids[None].expand(2, -1), prompt.attention_mask[None].expand(2, -1)
    with torch.no_grad():
        expected = model(
            images, sizes, input_ids=ids, attention_mask=mask, label_to_tokens=prompt.label_to_tokens
        )
    assert sum(len(d["scores"]) for d in expected) > 0
    state = {n: p.detach() for n, p in model.named_parameters() if n in trainable}
    out = export_run(
        tmp_path / "export", model, "prompt", state, prompt, model_identity(model, "glip_mini", None)
    )
    config = json.loads((out / CONFIG_FILE).read_text())
    assert config["caption"] == "fish. jellyfish. penguin" and config["tokenizer"] == "bert-base-uncased"
    assert config["class_names"] == ["fish", "jellyfish", "penguin"] and config["label_to_tokens"]["2"] == [
        3,
        4,
    ]
    assert (out / TENSORS_FILE).stat().st_size < 300_000

    fresh = mini_model(weights=True).eval()  # no prompt offset, and then no text encoder at all
    fresh.language_backbone = None
    artifact = load_export(out)
    artifact.check_model(fresh)
    with torch.no_grad():
        got = fresh(images, sizes, text=artifact.text_features(2), label_to_tokens=artifact.label_to_tokens)
    for e, g in zip(expected, got, strict=True):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(e[key], g[key]), key


def test_linear_and_lora_exports_hold_only_the_trained_tensors_and_reload(tmp_path):
    prompt = encode_prompt(["tree"], load_tokenizer())
    for mode, extra in (("linear", {}), ("lora", {"lora": LORA})):
        model = mini_model()
        trainable = build_policy({"name": mode, **extra}).apply(model)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in trainable:
                    p.add_(0.01)
        state = {n: p.detach() for n, p in model.named_parameters() if n in trainable}
        out = export_run(
            tmp_path / mode,
            model,
            mode,
            state,
            prompt,
            model_identity(model, "glip_mini", None),
            lora=extra.get("lora"),
        )
        artifact = load_export(out)
        assert set(artifact.tensors) == set(trainable)
        fresh = artifact.apply(mini_model())
        params = dict(fresh.named_parameters())
        for name, value in state.items():
            assert torch.equal(params[name], value)
