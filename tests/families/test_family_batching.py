"""Batched inference whose images cannot affect each other, where transformers' batches do."""

from __future__ import annotations

import pytest
import torch

from tests.families.conftest import ALL, CLASSES, GROUNDING, family, image

# Four sizes; (48, 80) and (60, 100) resize to the same input, so they share a stacked batch.
SIZES = [(48, 80), (96, 60), (60, 100), (70, 70)]


@pytest.mark.parametrize("name", ALL)
def test_an_image_alone_equals_it_in_a_batch_of_four_sizes(name: str):
    fam = family(name, threshold=0.0)
    imgs = [image(seed, size) for seed, size in enumerate(SIZES)]
    batches = fam.preprocess(imgs)
    for batch in batches:  # never padded for another image
        assert batch.pixel_mask is None or bool(batch.pixel_mask.all())
    assert sorted(i for b in batches for i in b.index) == [0, 1, 2, 3]
    assert max(len(b) for b in batches) >= 2  # a real stacked batch is part of the check
    together = fam.detect(imgs, CLASSES, batch_size=4)
    for i, img in enumerate(imgs):
        alone = fam.detect([img], CLASSES)[0]
        assert len(alone["scores"]) == len(together[i]["scores"])
        assert (alone["scores"] - together[i]["scores"]).abs().max() <= 1e-5
        assert (alone["boxes"] - together[i]["boxes"]).abs().max() <= 1e-3
        assert torch.equal(alone["labels"], together[i]["labels"])


@pytest.mark.parametrize("name", GROUNDING)
def test_transformers_padded_batch_changes_an_image_detections(name: str):
    """Why adapt batches by size: transformers pads a batch to its largest image, and Grounding
    DINO's outputs for the small image then change (Swin windows, the input projections' GroupNorm
    and the two-stage query selection all see the padding)."""
    fam = family(name)
    small, large = image(0, (48, 80)), image(1, (96, 60))
    caption = fam.encode_prompt(CLASSES).caption
    with torch.no_grad():
        alone = fam.hf(**fam.processor(images=small, text=caption, return_tensors="pt"))
        padded = fam.hf(**fam.processor(images=[small, large], text=[caption] * 2, return_tensors="pt"))
    assert (alone.logits[0].sigmoid() - padded.logits[0].sigmoid()).abs().max() > 1e-3


def test_max_batch_caps_a_batch():
    fam = family("owlv2_mini")
    batches = fam.preprocess([image(i, (40, 50)) for i in range(5)], max_batch=2)
    assert [len(b) for b in batches] == [2, 2, 1]
    assert [b.index for b in batches] == [[0, 1], [2, 3], [4]]
