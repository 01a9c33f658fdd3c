"""Exported artifacts reload exactly, byte for byte; LoRA exports are peft's own format; damage is
one error naming the file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from train_helpers import FIXTURE, LORA_TARGETS, apply_export, mini_model, mode_cfg

from adapt.detector import Detector
from adapt.export import (
    ADAPT_FILE,
    CONFIG_FILE,
    PEFT_PREFIX,
    TENSORS_FILE,
    ExportError,
    checkpoint_identity,
    load_export,
    model_identity,
)
from adapt.model import batch_images
from adapt.modes import InferenceText, build_policy, export_run, policy_for_export
from adapt.prompt import encode_prompt, load_tokenizer

CHECKPOINT = FIXTURE / "mini_glip.pth"


def _images():
    g = torch.Generator().manual_seed(0)
    return batch_images([torch.rand(3, 96, 128, generator=g), torch.rand(3, 128, 96, generator=g)])


def _trained(mode: str, seed: int = 7):
    """The mini model with the fixture weights, `mode` applied and its trainable tensors moved."""
    model = mini_model(weights=True).eval()
    model.cfg.input.min_size_test, model.cfg.input.max_size_test = 96, 128
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # peft draws lora_A from the global generator
        trainable = build_policy(mode_cfg(mode)).apply(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in trainable:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    model.eval()
    return model, {n: p.detach() for n, p in model.named_parameters() if n in trainable}


def make_export(out: Path, mode: str, classes: tuple[str, ...] = ("fish", "jellyfish", "penguin")) -> Path:
    """A deterministic export (same bytes in any process); also run by the reproducibility test's
    second process."""
    model, state = _trained(mode)
    prompt = encode_prompt(list(classes), load_tokenizer())
    identity = model_identity(model, "glip_mini", checkpoint_identity(CHECKPOINT))
    return export_run(out, model, build_policy(mode_cfg(mode)), state, prompt, identity, task="demo")


def test_prompt_export_detects_identically_with_the_language_backbone_removed(tmp_path):
    prompt = encode_prompt(["fish", "jellyfish", "penguin"], load_tokenizer())
    model, _ = _trained("prompt")
    images, sizes = _images()
    ids, mask = prompt.input_ids[None].expand(2, -1), prompt.attention_mask[None].expand(2, -1)
    with torch.no_grad():
        expected = model(
            images, sizes, input_ids=ids, attention_mask=mask, label_to_tokens=prompt.label_to_tokens
        )
    assert sum(len(d["scores"]) for d in expected) > 0
    out = make_export(tmp_path / "export", "prompt")
    config = json.loads((out / CONFIG_FILE).read_text())
    assert config["caption"] == "fish. jellyfish. penguin" and config["tokenizer"] == "bert-base-uncased"
    assert config["class_names"] == ["fish", "jellyfish", "penguin"]
    assert config["label_to_tokens"]["2"] == [3, 4]
    # What reproduces the run: its base weights, test-time sizes and inference settings.
    assert config["base_model"]["checkpoint"] == {
        "file": "mini_glip.pth",
        "sha256": checkpoint_identity(CHECKPOINT)["sha256"],
    }
    assert (config["arch"]["input"]["min_size_test"], config["arch"]["input"]["max_size_test"]) == (96, 128)
    assert set(config["arch"]["inference"]) == {
        "score_threshold",
        "pre_nms_top_n",
        "nms_threshold",
        "detections_per_image",
    }
    assert (out / TENSORS_FILE).stat().st_size < 300_000 and not (out / ADAPT_FILE).exists()

    fresh = mini_model(weights=True).eval()  # no prompt offset, and then no text encoder at all
    fresh.language_backbone = None
    artifact = load_export(out)
    artifact.check_model(fresh)
    text = policy_for_export(artifact.policy_name).inference_text(artifact)
    with torch.no_grad():
        got = fresh(images, sizes, text=text.batch(2), label_to_tokens=artifact.label_to_tokens)
    for e, g in zip(expected, got, strict=True):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(e[key], g[key]), key


def test_linear_and_lora_exports_hold_only_the_trained_tensors_and_reload(tmp_path):
    for mode in ("linear", "lora"):
        _, state = _trained(mode)
        out = make_export(tmp_path / mode, mode)
        artifact = load_export(out)
        if mode == "linear":
            assert set(artifact.tensors) == set(state) and artifact.peft_config is None
        else:  # peft's names: prefixed, without the adapter name
            assert len(artifact.tensors) == len(state)
            assert all(k.startswith(PEFT_PREFIX) and ".default." not in k for k in artifact.tensors)
        fresh = apply_export(artifact, mini_model(weights=True))
        params = dict(fresh.named_parameters())
        for name, value in state.items():
            assert torch.equal(params[name], value), name


def test_a_lora_export_is_peft_format_and_peft_loads_it_to_the_same_detections(tmp_path):
    """peft's own loaders (PeftModel.from_pretrained; inject_adapter_in_model +
    set_peft_model_state_dict) read the export onto an adapt GLIP and detect exactly like
    Detector.from_export."""
    from peft import LoraConfig, PeftModel, inject_adapter_in_model, set_peft_model_state_dict
    from peft.utils import load_peft_weights
    from PIL import Image

    out = make_export(tmp_path / "lora", "lora")
    peft_config = json.loads((out / CONFIG_FILE).read_text())
    assert peft_config["peft_type"] == "LORA" and peft_config["r"] == 2 and peft_config["lora_alpha"] == 4
    assert peft_config["target_modules"] == LORA_TARGETS and peft_config["inference_mode"] is True
    assert json.loads((out / ADAPT_FILE).read_text())["class_names"] == ["fish", "jellyfish", "penguin"]

    g = torch.Generator().manual_seed(3)
    pixels = (torch.rand(100, 150, 3, generator=g) * 255).to(torch.uint8).numpy()
    images = [Image.fromarray(pixels), Image.fromarray(pixels[:, ::-1].copy())]
    ours = Detector.from_export(out, checkpoint=CHECKPOINT).predict(images)

    prompt = load_export(out).encoded_prompt()

    def detector(glip):
        glip.cfg.input.min_size_test, glip.cfg.input.max_size_test = 96, 128  # the export's sizes
        det = Detector(glip)
        det.export_text = InferenceText(prompt)  # the run's caption, as from_export uses it
        return det

    unadapted = detector(mini_model(weights=True)).predict(images)
    assert not all(torch.equal(a.scores, b.scores) for a, b in zip(ours, unadapted, strict=True))

    by_pretrained = PeftModel.from_pretrained(mini_model(weights=True), str(out)).get_base_model()
    by_state_dict = mini_model(weights=True)
    inject_adapter_in_model(LoraConfig.from_pretrained(str(out)), by_state_dict)
    result = set_peft_model_state_dict(by_state_dict, load_peft_weights(str(out)))
    assert not result.unexpected_keys and not [k for k in result.missing_keys if "lora_" in k]
    for glip in (by_pretrained, by_state_dict):
        for a, b in zip(detector(glip).predict(images), ours, strict=True):
            assert len(a) > 0
            for key in ("boxes", "scores", "labels"):
                assert torch.equal(getattr(a, key), getattr(b, key)), key


@pytest.mark.parametrize("mode", ["prompt", "lora"])
def test_exports_of_identical_weights_have_identical_bytes(tmp_path, mode):
    """Across processes too: safetensors writes its metadata map in a per-process random order."""
    first, second, other = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    make_export(first, mode)
    make_export(second, mode)
    code = (
        "import sys; from pathlib import Path; sys.path[:0] = [sys.argv[1]]; "
        "from test_export import make_export; make_export(Path(sys.argv[2]), sys.argv[3])"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent), str(other), mode], check=True, timeout=300
    )
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in other.iterdir()) and TENSORS_FILE in names
    for name in names:
        data = (first / name).read_bytes()
        assert data == (second / name).read_bytes() == (other / name).read_bytes(), name


def test_damaged_exports_get_one_sentence_naming_the_file(tmp_path):
    out = make_export(tmp_path / "export", "prompt")
    tensors_path = out / TENSORS_FILE
    good = tensors_path.read_bytes()

    tensors_path.write_bytes(good[: len(good) // 2])
    with pytest.raises(ExportError, match=rf"{TENSORS_FILE}: not a readable safetensors file"):
        load_export(out)
    tensors_path.write_bytes(b"")
    with pytest.raises(ExportError, match=rf"{TENSORS_FILE}: not a readable safetensors file"):
        load_export(out)

    tensors_path.write_bytes(good)
    tensors = load_file(tensors_path)
    tensors["prompt_offset"] = tensors["prompt_offset"][:, :10].contiguous()
    save_file(tensors, tensors_path)
    with pytest.raises(
        ExportError, match=r"tensor 'prompt_offset' has shape \[256, 10\], but adapter_config"
    ):
        load_export(out)

    tensors_path.write_bytes(good)
    (out / CONFIG_FILE).write_text('{"format": "adapt-export", "mode": ')
    with pytest.raises(ExportError, match=rf"{CONFIG_FILE}: unreadable JSON"):
        load_export(out)
    tensors_path.unlink()
    with pytest.raises(ExportError, match="not an adapt export"):
        load_export(out)


def test_a_tensor_that_does_not_fit_the_model_is_named(tmp_path):
    """Consistent with its JSON, but not with the model the export is applied to."""
    out = make_export(tmp_path / "linear", "linear")
    config = json.loads((out / CONFIG_FILE).read_text())
    tensors = load_file(out / TENSORS_FILE)
    name = next(n for n in tensors if n.endswith("bbox_pred.weight"))
    tensors[name] = torch.zeros(2, *tensors[name].shape[1:])
    config["tensors"][name] = list(tensors[name].shape)
    save_file(tensors, out / TENSORS_FILE)
    (out / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ExportError, match=rf"tensor '{name}' has shape \[2, .*the model's parameter has"):
        apply_export(load_export(out), mini_model(weights=True))


def test_linear_and_linear_cached_exports_say_which_produced_them(tmp_path):
    """Issue 24 item 18: both wrote identical adapter_config.json (mode "linear", policy "linear")."""
    from adapt.config import compose_config

    model, state = _trained("linear")
    prompt = encode_prompt(["fish", "jellyfish"], load_tokenizer())
    identity = model_identity(model, "glip_mini", checkpoint_identity(CHECKPOINT))
    recorded = {}
    for choice in ("linear", "linear_cached"):
        policy = build_policy(compose_config([f"mode={choice}"]).mode)
        out = export_run(tmp_path / choice, model, policy, state, prompt, identity, mode=choice)
        recorded[choice] = json.loads((out / CONFIG_FILE).read_text())
        assert load_export(out).policy_name == "linear"  # both apply as the linear probe
    assert recorded["linear"]["mode_label"] == "linear probing"
    assert recorded["linear_cached"]["mode_label"] == "linear probing (cached tower)"
    assert recorded["linear_cached"]["mode"] == "linear_cached"
    assert load_export(tmp_path / "linear_cached").mode_label == "linear probing (cached tower)"
    tensors = [(tmp_path / c / TENSORS_FILE).read_bytes() for c in ("linear", "linear_cached")]
    assert tensors[0] == tensors[1]
