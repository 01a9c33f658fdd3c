"""At a released model's dimensions (random weights, nothing downloaded): Grounding DINO Swin-T +
BERT-base (transformers' GroundingDinoConfig defaults are grounding-dino-tiny's), and OWLv2 B/16 at
960 pixels. The same equalities as the mini tests, at full size."""

from __future__ import annotations

import pytest
import torch

from adapt.families import build_family
from adapt.families.exports import apply_export, prompt_tensors
from tests.families.conftest import CLASSES, by_score, image, transformers_detections

REAL = {
    "grounding_dino": {"auxiliary_loss": True},  # everything else: transformers' defaults (Swin-T, BERT-base)
    "owlv2": {"vision_config": {"image_size": 960, "patch_size": 16}},  # owlv2-base-patch16's input
}
TOKENIZER = {"grounding_dino": "bert-base-uncased", "owlv2": "clip-bpe-mini"}
PROCESSOR = {"grounding_dino": {}, "owlv2": {"size": {"height": 960, "width": 960}}}


@pytest.mark.slow
@pytest.mark.parametrize("family_name", ["grounding_dino", "owlv2"])
def test_real_dimensions_equal_transformers(family_name: str):
    spec = {
        "name": f"{family_name}_real_dims",
        "family": family_name,
        "config": REAL[family_name],
        "tokenizer": TOKENIZER[family_name],
        "processor": PROCESSOR[family_name],
        "inference": {"decoding": "transformers", "threshold": 0.0},
    }
    fam = build_family(spec)
    if family_name == "grounding_dino":
        assert fam.hf.config.num_queries == 900 and fam.hf.config.text_config.hidden_size == 768
    img = image(0, (480, 640))
    reference = transformers_detections(fam, img, CLASSES, threshold=0.0)
    ours = fam.detect([img], CLASSES)[0]
    s_ours, b_ours = by_score(ours)
    s_ref, b_ref = by_score(reference)
    assert len(s_ours) == len(s_ref)
    assert (s_ours - s_ref).abs().max() <= 1e-5
    assert (b_ours - b_ref).abs().max() <= 1e-3
    # A zero prompt offset, exported and applied with the text encoder dropped: zero-shot exactly.
    prompt = fam.encode_prompt(CLASSES)
    fam.enable_prompt_tuning(prompt)
    stored = prompt_tensors(fam, prompt)
    fam.prompt_offset = None
    text = apply_export(fam, "prompt", stored)
    exported = fam.detect([img], prompts=[prompt], text=text)[0]
    assert torch.equal(exported["scores"], ours["scores"]) and torch.equal(exported["boxes"], ours["boxes"])
