"""Fixtures of the family tests: the shipped `_mini` configs, small images, transformers' own pipeline.

Every test builds the very configs users run (`conf/model/*_mini.yaml`) with random weights; nothing
is downloaded. Images are seeded noise of a few sizes, so the detectors' (random) outputs are varied.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from adapt.families import DetectorFamily, build_family

GROUNDING = ["grounding_dino_mini", "mm_grounding_dino_mini"]
ALL = [*GROUNDING, "owlv2_mini"]
CLASSES = ["fish", "jellyfish", "sea lion"]


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)


def image(seed: int, size: tuple[int, int]) -> Image.Image:
    """A (height, width) RGB noise image."""
    pixels = np.random.RandomState(seed).randint(0, 256, (*size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def family(name: str, **inference: object) -> DetectorFamily:
    fam = build_family(name)
    if inference:
        fam.settings = replace(fam.settings, **inference)
    return fam


def caption_for(fam: DetectorFamily, classes: list[str]) -> str:
    return fam.encode_prompt(classes).caption


@torch.no_grad()
def transformers_detections(
    fam: DetectorFamily, img: Image.Image, classes: list[str], threshold: float
) -> dict:
    """processor + model + post_process_grounded_object_detection, as transformers' docs run them."""
    processor, model = fam.processor, fam.hf
    h, w = img.height, img.width
    if fam.name == "owlv2":
        inputs = processor(text=[classes], images=img, return_tensors="pt")
        outputs = model(**inputs)
        return processor.post_process_grounded_object_detection(
            outputs, threshold=threshold, target_sizes=[(h, w)]
        )[0]
    inputs = processor(images=img, text=caption_for(fam, classes), return_tensors="pt")
    outputs = model(**inputs)
    return processor.post_process_grounded_object_detection(
        outputs, inputs.input_ids, threshold=threshold, text_threshold=threshold, target_sizes=[(h, w)]
    )[0]


def by_score(dets: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores and boxes, best first (ties broken by the box, so the order is total)."""
    scores, boxes = dets["scores"], dets["boxes"]
    keys = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), *boxes[i].tolist()))
    return scores[keys], boxes[keys]
