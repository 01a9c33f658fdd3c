"""Grounding DINO and MM Grounding DINO mini: adapt's path equals transformers' own, piece by piece."""

from __future__ import annotations

import pytest
import torch

from adapt.families import GroundingDino
from adapt.families.captions import grounding_caption
from adapt.prompt import PromptTooLongError
from tests.families.conftest import CLASSES, GROUNDING, by_score, family, image, transformers_detections

SIZES = [(48, 80), (96, 60)]


@pytest.mark.parametrize("name", GROUNDING)
def test_detections_equal_transformers_pipeline(name: str):
    """Same image, same thresholds: the boxes and scores of processor + model + post-processing."""
    fam = family(name)
    for seed, size in enumerate(SIZES):
        img = image(seed, size)
        reference = transformers_detections(fam, img, CLASSES, threshold=0.0)
        fam.settings = fam.settings.__class__(decoding="transformers", threshold=0.0)
        ours = fam.detect([img], CLASSES)[0]
        assert len(ours["scores"]) == len(reference["scores"]) == fam.hf.config.num_queries
        s_ours, b_ours = by_score(ours)
        s_ref, b_ref = by_score(reference)
        assert (s_ours - s_ref).abs().max() <= 1e-5
        assert (b_ours - b_ref).abs().max() <= 1e-3
        # A threshold between two scores keeps the same boxes in both.
        gap = int((s_ref[:-1] - s_ref[1:]).argmax())
        threshold = float(s_ref[gap] + s_ref[gap + 1]) / 2
        fam.settings = fam.settings.__class__(decoding="transformers", threshold=threshold)
        kept = fam.detect([img], CLASSES)[0]
        assert (
            len(kept["scores"])
            == len(transformers_detections(fam, img, CLASSES, threshold)["scores"])
            == gap + 1
        )


@pytest.mark.parametrize("name", GROUNDING)
def test_labels_are_the_class_owning_the_best_token(name: str):
    fam = family(name, threshold=0.0)
    img = image(3, (64, 64))
    prompt = fam.encode_prompt(CLASSES)
    batch = fam.preprocess([img])[0]
    with torch.no_grad():
        raw = fam.run(batch, prompt, fam.encode_text(prompt))
        dets = fam(batch, prompt)[0]
    logits = raw.logits[0]
    per_class = torch.stack(
        [logits[:, prompt.label_to_tokens[label]].max(-1).values for label in prompt.labels], -1
    )
    expected = torch.tensor(prompt.labels)[per_class.argmax(-1)]
    assert torch.equal(dets["labels"], expected)


@pytest.mark.parametrize("name", GROUNDING)
def test_text_features_are_what_transformers_feeds_the_detector(name: str):
    """A forward hook on the text backbone, inside transformers' own forward, sees exactly
    encode_text's features (transformers' phrase masks and position ids)."""
    fam = family(name)
    prompt = fam.encode_prompt(CLASSES)
    seen = []
    hook = fam.hf.model.text_backbone.register_forward_hook(
        lambda m, a, out: seen.append(out.last_hidden_state)
    )
    try:
        with torch.no_grad():
            inputs = fam.processor(images=image(0, (64, 64)), text=prompt.caption, return_tensors="pt")
            fam.hf(**inputs)
    finally:
        hook.remove()
    assert torch.equal(inputs["input_ids"][0], prompt.input_ids)
    with torch.no_grad():
        assert torch.equal(fam.encode_text(prompt), seen[0])


@pytest.mark.parametrize("name", GROUNDING)
def test_loss_equals_transformers_loss(name: str):
    """The loss of a padded batch of two images is transformers' on the same batch, term by term."""
    fam = family(name)
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
    torch.manual_seed(0)
    ours = fam(batch, prompt, targets=targets)
    labels = fam.loss_targets(targets, prompt, batch.sizes)
    inputs = fam.processor(images=imgs, text=[prompt.caption] * 2, return_tensors="pt")
    assert torch.equal(inputs["pixel_values"], batch.pixel_values)
    torch.manual_seed(0)
    reference = fam.hf(**inputs, labels=labels)
    assert set(ours) == {*reference.loss_dict, "total"}
    for key, value in reference.loss_dict.items():
        assert torch.allclose(ours[key], value, rtol=1e-6, atol=1e-6), key
    assert torch.allclose(ours["total"], reference.loss, rtol=1e-6)
    # The second image's box, normalised by that image's own size (not the padded batch's).
    assert torch.allclose(labels[1]["boxes"], torch.tensor([[30 / 60, 55 / 96, 40 / 60, 70 / 96]]))
    assert labels[0]["class_labels"].tolist() == [0, 2]


@pytest.mark.parametrize("name", GROUNDING)
def test_zero_offset_and_its_export_equal_zero_shot_exactly(name: str):
    from adapt.families.exports import apply_export, prompt_tensors

    fam = family(name, threshold=0.0)
    imgs = [image(0, (48, 80)), image(1, (64, 64))]
    zero_shot = fam.detect(imgs, CLASSES)
    prompt = fam.encode_prompt(CLASSES)
    fam.enable_prompt_tuning(prompt)
    assert fam.prompt_offset is not None and fam.prompt_offset.offset.shape == (256, 32)
    tuned = fam.detect(imgs, CLASSES)
    tensors = prompt_tensors(fam, prompt)
    fresh = family(name, threshold=0.0)
    stored = apply_export(fresh, "prompt", tensors)
    assert fresh.hf.model.text_backbone is None  # the text encoder is gone
    exported = fresh.detect(imgs, prompts=[prompt], text=stored)
    for a, b, c in zip(zero_shot, tuned, exported, strict=True):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(a[key], b[key]) and torch.equal(a[key], c[key]), key
    with pytest.raises(ValueError, match="text encoder was replaced"):
        fresh.detect(imgs, CLASSES)


def test_caption_format_and_token_spans():
    caption, spans = grounding_caption(["fish", "sea lion", "Stingray"])
    assert caption == "fish . sea lion . Stingray ."
    assert [caption[a:b] for a, b in spans] == ["fish", "sea lion", "Stingray"]
    fam = family("grounding_dino_mini")
    prompt = fam.encode_prompt(["fish", "sea lion", "Stingray"], labels=[4, 7, 9])
    tokens = fam.tokenizer.convert_ids_to_tokens(prompt.input_ids.tolist())
    assert tokens == ["[CLS]", "fish", ".", "sea", "lion", ".", "sting", "##ray", ".", "[SEP]"]
    assert prompt.label_to_tokens == {4: [1], 7: [3, 4], 9: [6, 7]}
    # transformers' processor joins a class list as "fish. sea lion. stingray.": the same token ids.
    merged = fam.processor(text=["fish", "sea lion", "Stingray"], return_tensors="pt")["input_ids"][0]
    assert torch.equal(merged, prompt.input_ids)
    for bad in ["u.s. mail", "why?", "  "]:
        with pytest.raises(ValueError, match="cannot be a Grounding DINO phrase"):
            fam.encode_prompt(["fish", bad])


def test_long_class_lists_are_chunked_with_global_labels():
    fam = family("grounding_dino_mini", threshold=0.0)
    names = [f"class number {i} of many" for i in range(60)]  # about 7 tokens each: 3 chunks
    prompts = fam.encode_prompts(names)
    assert len(prompts) >= 2
    assert all(len(p.input_ids) <= fam.text_limit for p in prompts)
    assert [label for p in prompts for label in p.labels] == list(range(1, 61))
    assert sum(len(p.class_names) for p in prompts) == 60
    # Each chunk is its own forward pass; the image's detections are their union, best first.
    img = image(0, (64, 64))
    merged = fam.detect([img], names)[0]
    per_chunk = [fam.detect([img], prompts=[p])[0] for p in prompts]
    assert len(merged["scores"]) == sum(len(d["scores"]) for d in per_chunk)
    assert torch.equal(
        merged["scores"], torch.cat([d["scores"] for d in per_chunk]).sort(descending=True).values
    )
    assert set(merged["labels"].tolist()) <= set(range(1, 61))
    with pytest.raises(PromptTooLongError):
        fam.encode_prompt(names)
    with pytest.raises(PromptTooLongError):
        fam.encode_prompts(["word " * 300])


def test_mm_grounding_dino_is_its_own_family():
    from adapt.families import MMGroundingDino

    assert issubclass(MMGroundingDino, GroundingDino)
    fam = family("mm_grounding_dino_mini")
    assert type(fam.hf).__name__ == "MMGroundingDinoForObjectDetection"
    assert fam.hf.config.model_type == "mm-grounding-dino"
