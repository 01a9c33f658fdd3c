"""Every mode's trainable set and module modes, one training step each, and the exports' round trips."""

from __future__ import annotations

import pytest
import torch

from adapt.families import modes
from adapt.families.exports import FamilyExportError, apply_export, check_base_weights, export_tensors
from tests.families.conftest import ALL, CLASSES, family, image

TARGETS = [
    {
        "boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [40.0, 10.0, 70.0, 30.0]]),
        "labels": torch.tensor([1, 3]),
    },
    {"boxes": torch.tensor([[10.0, 20.0, 50.0, 90.0]]), "labels": torch.tensor([2])},
]
IMAGES = [image(0, (48, 80)), image(1, (96, 60))]

# What `linear` trains, by family (transformers' names; tied copies listed once).
LINEAR = {
    "grounding_dino": {
        "model.decoder.layer_norm",
        "model.decoder.bbox_embed.0",  # = bbox_embed.* (shared by every decoder layer)
        "model.enc_output_norm",
        "model.encoder_output_bbox_embed",
    },
    "mm_grounding_dino": {
        "model.decoder.layer_norm",
        "model.decoder.bbox_embed.0",
        "model.decoder.class_embed.0",  # the contrastive head's logit bias
        "model.enc_output_norm",
        "model.encoder_output_bbox_embed",
        "model.encoder_output_class_embed",
    },
    "owlv2": {"class_head", "box_head"},
}


def owners(names: list[str]) -> set[str]:
    """The module each trainable name belongs to (`hf.` and the tensor name dropped)."""
    out = set()
    for name in names:
        path = name.removeprefix("hf.").rsplit(".", 1)[0]
        for prefix in LINEAR_PREFIXES:
            if path.startswith(prefix):
                path = prefix
        out.add(path)
    return out


LINEAR_PREFIXES = sorted({p for v in LINEAR.values() for p in v}, key=len, reverse=True)


def step(fam, mode: str, prompt) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One AdamW step in `mode`; parameters before and after."""
    trainable = modes.apply_mode(fam, mode, prompt, lora={"r": 4})
    fam.train()
    modes.set_module_modes(fam, mode)
    before = {n: p.detach().clone() for n, p in fam.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in fam.parameters() if p.requires_grad], lr=1e-2)
    batch = fam.preprocess(IMAGES, together=True)[0]
    torch.manual_seed(0)
    losses = fam(batch, prompt, targets=TARGETS)
    losses["total"].backward()
    optimizer.step()
    after = {n: p.detach().clone() for n, p in fam.named_parameters()}
    assert trainable == [n for n, p in fam.named_parameters() if p.requires_grad]
    return before, after


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("mode", ["prompt", "linear", "full", "lora"])
def test_each_mode_trains_exactly_its_set(name: str, mode: str):
    fam = family(name)
    prompt = fam.encode_prompt(CLASSES)
    before, after = step(fam, mode, prompt)
    trainable = [n for n, p in fam.named_parameters() if p.requires_grad]
    changed = {n for n in after if n in before and not torch.equal(before[n], after[n])}
    assert changed <= set(trainable)
    if mode == "prompt":
        assert trainable == ["prompt_offset.offset"] and changed == set(trainable)
    elif mode == "linear":
        assert owners(trainable) == LINEAR[fam.name]
        assert changed  # the probe moves
    elif mode == "lora":
        assert trainable and all("lora_" in n for n in trainable)
        assert {n for n in changed if "lora_B" in n}  # B starts at zero and moves first
        assert all(fam.hf.get_submodule(m).training is False for m in (*fam.vision_modules, fam.text_encoder))
    else:
        assert len(trainable) == len(list(fam.parameters()))
        assert fam.training and all(m.training for m in fam.modules())
    if mode in ("prompt", "linear"):
        assert not any(m.training for m in fam.hf.modules())  # the whole detector runs in eval mode


@pytest.mark.parametrize("name", ALL)
def test_zero_trains_nothing(name: str):
    fam = family(name)
    assert modes.apply_mode(fam, "zero") == []
    fam.train()
    modes.set_module_modes(fam, "zero")
    assert not any(m.training for m in fam.hf.modules())
    with pytest.raises(ValueError, match="unknown mode"):
        modes.apply_mode(fam, "partial")


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("mode", ["linear", "full", "lora"])
def test_export_round_trip(name: str, mode: str):
    """A trained model's export, applied to a fresh detector on the same weights, detects the same."""
    fam = family(name, threshold=0.0)
    prompt = fam.encode_prompt(CLASSES)
    step(fam, mode, prompt)
    fam.eval()
    trainable = [n for n, p in fam.named_parameters() if p.requires_grad]
    tensors, peft_config = export_tensors(fam, mode, trainable, prompt)
    if mode == "lora":
        assert peft_config is not None and peft_config["peft_type"] == "LORA"
        assert all(k.startswith("base_model.model.") for k in tensors)
    else:
        assert set(tensors) == {n.removeprefix("hf.") for n in trainable}
    fresh = family(name, threshold=0.0)
    check_base_weights(fam.identity, fresh)
    apply_export(fresh, mode, tensors, peft_config)
    expected = fam.detect(IMAGES, CLASSES)
    got = fresh.detect(IMAGES, CLASSES)
    for a, b in zip(expected, got, strict=True):
        assert torch.allclose(a["scores"], b["scores"], atol=1e-6)
        assert torch.allclose(a["boxes"], b["boxes"], atol=1e-4)


@pytest.mark.parametrize("name", ALL)
def test_lora_export_loads_onto_the_plain_transformers_model_with_peft(tmp_path, name: str):
    from peft import PeftModel
    from safetensors.torch import save_file

    fam = family(name)
    prompt = fam.encode_prompt(CLASSES)
    step(fam, "lora", prompt)
    fam.eval()
    tensors, peft_config = export_tensors(fam, "lora", [], prompt)
    save_file(tensors, tmp_path / "adapter_model.safetensors", metadata={"format": "pt"})
    (tmp_path / "adapter_config.json").write_text(__import__("json").dumps(peft_config))
    plain = family(name).hf
    # peft's tied-embedding check trips on Grounding DINO's config (tied weights declared, no input
    # embeddings); the ties are already made, so the flag can go before peft reads it.
    plain.config.tie_word_embeddings = False
    peft_model = PeftModel.from_pretrained(plain, tmp_path).eval()
    if fam.name == "owlv2":
        inputs = fam.processor(text=[CLASSES], images=IMAGES[0], return_tensors="pt")
    else:
        inputs = fam.processor(images=IMAGES[0], text=prompt.caption, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(peft_model(**inputs).logits, fam.hf(**inputs).logits, atol=1e-5)


def test_exports_refuse_other_weights():
    trained = family("grounding_dino_mini")
    other = family("mm_grounding_dino_mini")
    with pytest.raises(FamilyExportError, match="belongs to a 'grounding_dino' detector"):
        check_base_weights(trained.identity, other)
    reseeded = dict(trained.identity, weights_sha256="0" * 64)
    with pytest.raises(FamilyExportError, match="SHA-256 0000"):
        check_base_weights(reseeded, family("grounding_dino_mini"))
    with pytest.raises(FamilyExportError, match="not a parameter"):
        apply_export(family("grounding_dino_mini"), "linear", {"model.nothing.weight": torch.zeros(1)})


def test_the_seam_accepts_parameters_as_groups_and_a_frozen_set_for_full():
    """GLIP's official groups are partly bare parameters (log_scale, bias0) and its `full` freezes
    stages: the seam expresses both (class attributes), so GLIP can implement it unchanged."""
    fam = family("owlv2_mini")
    fam.linear_modules = ("box_head.dense2", "owlv2.logit_scale")
    fam.frozen_in_full = ("owlv2.vision_model.embeddings",)
    assert modes.mode_group(fam, "linear") == {
        "hf.box_head.dense2.weight",
        "hf.box_head.dense2.bias",
        "hf.owlv2.logit_scale",
    }
    trainable = modes.apply_mode(fam, "full")
    assert not any(n.startswith("hf.owlv2.vision_model.embeddings.") for n in trainable)
    assert len(trainable) == len(list(fam.parameters())) - 3  # class embedding, patch and position
