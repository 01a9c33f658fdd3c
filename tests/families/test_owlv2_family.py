"""OWLv2 mini: adapt's path equals transformers' own; queries are scored on their own."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers.loss.loss_deformable_detr import DeformableDetrForObjectDetectionLoss

from adapt.families.owlv2 import DEFAULT_LOSS
from adapt.prompt import PromptTooLongError
from tests.families.conftest import CLASSES, by_score, family, image, transformers_detections


def test_detections_equal_transformers_pipeline():
    fam = family("owlv2_mini", threshold=0.0)
    for seed, size in enumerate([(48, 80), (96, 60), (64, 64)]):
        img = image(seed, size)
        reference = transformers_detections(fam, img, CLASSES, threshold=0.0)
        ours = fam.detect([img], CLASSES)[0]
        assert len(ours["scores"]) == len(reference["scores"]) == 16  # every patch of the 64x64 input
        s_ours, b_ours = by_score(ours)
        s_ref, b_ref = by_score(reference)
        assert (s_ours - s_ref).abs().max() <= 1e-5
        assert (b_ours - b_ref).abs().max() <= 1e-3

        # transformers' label is the argmax query: adapt's label is that query's class (label 1..3).
        def keyed(dets, offset):
            return sorted(
                (-float(s), *b.tolist(), int(lab) + offset)
                for s, b, lab in zip(dets["scores"], dets["boxes"], dets["labels"], strict=True)
            )

        assert [k[-1] for k in keyed(ours, 0)] == [k[-1] for k in keyed(reference, 1)]


def test_class_embeddings_are_transformers_text_embeds():
    fam = family("owlv2_mini")
    prompt = fam.encode_prompt(CLASSES)
    inputs = fam.processor(text=[CLASSES], images=image(0, (64, 64)), return_tensors="pt")
    assert torch.equal(inputs["input_ids"], prompt.input_ids)
    with torch.no_grad():
        reference = fam.hf(**inputs).text_embeds[0]  # normalised, as the class head receives them
        ours = fam.encode_text(prompt)
    assert torch.allclose(ours / ours.norm(dim=-1, keepdim=True), reference, atol=1e-6)


def test_queries_are_scored_on_their_own():
    """A class's logits do not depend on the other queries of the prompt."""
    fam = family("owlv2_mini")
    batch = fam.preprocess([image(1, (50, 70))])[0]
    with torch.no_grad():
        full = fam.encode_prompt(CLASSES)
        alone = fam.encode_prompt(CLASSES[1:2], labels=[2])
        a = fam.run(batch, full, fam.encode_text(full)).logits[..., 1]
        b = fam.run(batch, alone, fam.encode_text(alone)).logits[..., 0]
    assert torch.allclose(a, b, atol=1e-6)
    assert alone.label_to_tokens == {2: [0]}
    assert len(fam.encode_prompts(["x"] * 200)) == 1  # no text limit across queries: one prompt


def test_loss_is_deformable_detr_loss_on_transformers_outputs():
    """transformers has no OWLv2 loss; adapt's is transformers' Deformable DETR loss, applied to
    exactly what transformers' own forward predicts for the same batch."""
    fam = family("owlv2_mini")
    imgs = [image(0, (48, 80)), image(1, (96, 60))]
    prompt = fam.encode_prompt(CLASSES)
    targets = [
        {
            "boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [40.0, 10.0, 70.0, 30.0]]),
            "labels": torch.tensor([1, 3]),
        },
        {"boxes": torch.tensor([[10.0, 20.0, 50.0, 90.0]]), "labels": torch.tensor([2])},
    ]
    batch = fam.preprocess(imgs, together=True)[0]
    ours = fam(batch, prompt, targets=targets)
    labels = fam.loss_targets(targets, prompt, batch.sizes)
    # OWLv2 pads to a square: boxes are relative to the longer side (96 for the second image).
    assert torch.allclose(labels[1]["boxes"], torch.tensor([[30 / 96, 55 / 96, 40 / 96, 70 / 96]]))
    inputs = fam.processor(text=[CLASSES, CLASSES], images=imgs, return_tensors="pt")
    out = fam.hf(**inputs)
    config = SimpleNamespace(num_labels=len(CLASSES), auxiliary_loss=False, **DEFAULT_LOSS)
    loss, losses, _ = DeformableDetrForObjectDetectionLoss(out.logits, labels, "cpu", out.pred_boxes, config)
    for key, value in losses.items():
        assert torch.allclose(ours[key], value, rtol=1e-5, atol=1e-5), key
    assert torch.allclose(ours["total"], loss, rtol=1e-5)


def test_zero_offset_and_its_export_equal_zero_shot_exactly():
    from adapt.families.exports import apply_export, prompt_tensors

    fam = family("owlv2_mini", threshold=0.0)
    imgs = [image(0, (48, 80)), image(1, (64, 64))]
    zero_shot = fam.detect(imgs, CLASSES)
    prompt = fam.encode_prompt(CLASSES)
    with pytest.raises(ValueError, match="one row per class"):
        fam.enable_prompt_tuning()
    fam.enable_prompt_tuning(prompt)
    assert fam.prompt_offset.offset.shape == (3, 32)  # one row per class embedding
    tuned = fam.detect(imgs, CLASSES)
    fresh = family("owlv2_mini", threshold=0.0)
    stored = apply_export(fresh, "prompt", prompt_tensors(fam, prompt))
    assert fresh.hf.owlv2.text_model is None
    exported = fresh.detect(imgs, prompts=[prompt], text=stored)
    for a, b, c in zip(zero_shot, tuned, exported, strict=True):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(a[key], b[key]) and torch.equal(a[key], c[key]), key


def test_query_format_and_limits():
    fam = family("owlv2_mini")
    prompt = fam.encode_prompt(["fish", "sea lion"], labels=[3, 5])
    assert prompt.input_ids.shape == (2, 16)
    assert [prompt.caption[a:b] for a, b in prompt.char_spans] == ["fish", "sea lion"]
    assert prompt.label_to_tokens == {3: [0], 5: [1]}
    with pytest.raises(PromptTooLongError):
        fam.encode_prompt(["a very long query " * 4])
    with pytest.raises(ValueError, match="line break"):
        fam.encode_prompt(["fish\nshark"])
