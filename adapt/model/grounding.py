"""Phrase grounding from GLIP's head outputs: a ranked box list per phrase of a caption.

GLIP scores every anchor against every token; a phrase is scored through its tokens exactly as a
detection class is (the mean of its tokens' probabilities, official ``SCORE_AGG`` "MEAN"), so
grounding *is* detection with the caption's phrases as the classes: the same threshold, pre-NMS
top-k, box decoding, phrase-wise NMS and per-image cap (`adapt.model.postprocess.PostProcessor`,
whose settings the caller passes, normally ``model.postprocessor``). What grounding adds is the
grouping: each phrase's surviving boxes, highest score first, which is the ranked list that
Recall@k reads (`adapt.metrics.grounding`).

Each image of a batch may have its own caption (grounding data has one caption per sample), so the
phrases' token positions are given per image and each image is post-processed with its own map.
Equal scores are ordered by box coordinates, larger first, the order MDETR's referring-expression
evaluator gives ties, so a ranking never depends on ``topk``'s implementation-defined order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from adapt.model.glip import GLIP
from adapt.model.language import TextFeatures
from adapt.model.postprocess import PostProcessor

__all__ = ["RankedBoxes", "ground_batch", "ground_phrases", "rank_phrases"]


@dataclass
class RankedBoxes:
    """One phrase's boxes [k, 4] (xyxy, network-input pixels, +1 convention), best first, and scores [k]."""

    boxes: Tensor
    scores: Tensor


def rank_phrases(
    detections: dict[str, Tensor], num_phrases: int, max_boxes: int | None = None
) -> list[RankedBoxes]:
    """Group one image's detections (label = 1-based phrase index) into a ranked list per phrase.

    A phrase without a detection gets an empty list (the metric counts it as not found);
    ``max_boxes`` keeps the first ones (GLIP's Flickr30K evaluation keeps 100 per phrase).
    """
    boxes, scores, labels = detections["boxes"], detections["scores"], detections["labels"]
    out = []
    for phrase in range(1, num_phrases + 1):
        idx = torch.nonzero(labels == phrase).squeeze(1).tolist()
        keys = {i: (float(scores[i]), boxes[i].tolist()) for i in idx}
        order = sorted(idx, key=keys.__getitem__, reverse=True)[:max_boxes]
        index = torch.tensor(order, dtype=torch.int64, device=boxes.device)
        out.append(RankedBoxes(boxes[index].reshape(-1, 4), scores[index]))
    return out


def ground_phrases(
    bbox_reg: Sequence[Tensor],
    centerness: Sequence[Tensor],
    dot_product_logits: Sequence[Tensor],
    anchors: Sequence[Tensor],
    image_sizes: Sequence[tuple[int, int]],
    phrase_tokens: Sequence[Sequence[Sequence[int]]],
    postprocessor: PostProcessor,
    max_boxes: int | None = None,
) -> list[list[RankedBoxes]]:
    """Ranked boxes for every phrase of every image of a batch.

    Head outputs and anchors are those of `PostProcessor` (per FPN level: ``bbox_reg`` [B, 4, H, W],
    ``centerness`` [B, 1, H, W], ``dot_product_logits`` [B, H*W, T], ``anchors`` [H*W, 4]);
    ``phrase_tokens[b][i]`` are the token positions of phrase i of image b's caption
    (`adapt.data.grounding.encode_grounding`). A phrase without tokens (its span fell outside the
    tokenised caption) gets an empty list. Returns, per image, one :class:`RankedBoxes` per phrase.
    """
    if len(phrase_tokens) != len(image_sizes):
        raise ValueError(
            f"phrase tokens for {len(phrase_tokens)} images, head outputs for {len(image_sizes)}"
        )
    out = []
    for b, phrases in enumerate(phrase_tokens):
        label_to_tokens = {i + 1: [int(t) for t in tokens] for i, tokens in enumerate(phrases) if len(tokens)}
        if not label_to_tokens:
            empty = bbox_reg[0].new_zeros((0, 4))
            out.append([RankedBoxes(empty, empty[:, 0]) for _ in phrases])
            continue
        detections = postprocessor(
            [x[b : b + 1] for x in bbox_reg],
            [x[b : b + 1] for x in centerness],
            [x[b : b + 1] for x in dot_product_logits],
            anchors,
            [image_sizes[b]],
            label_to_tokens,
        )[0]
        out.append(rank_phrases(detections, len(phrases), max_boxes))
    return out


def ground_batch(
    model: GLIP,
    images: Tensor,
    image_sizes: Sequence[tuple[int, int]],
    text: TextFeatures,
    phrase_tokens: Sequence[Sequence[Sequence[int]]],
    max_boxes: int | None = None,
) -> list[list[RankedBoxes]]:
    """GLIP's forward pass up to the head, then :func:`ground_phrases` with each image's own phrases.

    ``GLIP.forward`` post-processes a batch with one label -> token map, the task prompt's; a
    grounding batch has one caption per image, so the head's outputs are ranked here instead, with
    the model's own post-processing settings. ``text`` is the batch's caption features (the
    prompt-tuning offset, when the model has one, is added here as ``forward`` adds it).
    """
    if model.prompt_offset is not None:
        text = text.with_offset(model.prompt_offset)
    features = model.backbone(images)
    outputs = model.head(features, text)
    anchors = model.anchor_generator([tuple(f.shape[-2:]) for f in features], device=images.device)
    return ground_phrases(
        outputs.bbox_reg,
        outputs.centerness,
        outputs.dot_product_logits,
        anchors,
        image_sizes,
        phrase_tokens,
        model.postprocessor,
        max_boxes,
    )
