"""Prompt ensembling for GLIP (after CLIP's ensemble of prompt templates), at the class-score level.

CLIP averages the *text embeddings* of several templates ("a photo of a {}.", ...) per class, since
its image and text encoders never meet before the final dot product. GLIP's cannot be averaged that
way: its deep fusion reads the whole caption at once, so each template changes every token's
features, the fused image features and with them the box regression and centerness. There is no
per-class text vector to average before the head. What all templates do share is the output per
anchor: each template's caption maps a class to its own token span, and the class score is the
mean of that span's token probabilities (official ``SCORE_AGG`` "MEAN"). The ensemble therefore
combines, per anchor and before thresholds, top-k and NMS:

* the class scores: the mean over templates of each template's per-class sigmoid score;
* the centerness: the mean of the templates' centerness probabilities;
* the box regression: the mean of the templates' deltas (the anchor is shared, so the deltas are
  comparable; a per-anchor average, as test-time augmentation averages boxes).

Cost: the backbone (Swin + FPN) runs once per image, the language model, the fusion tower and the
prediction layers once per template: J templates cost one image backbone plus J heads (GLIP-T at
800 x 1333: the tower is about 60% of the forward, so J = 4 costs about 3.4 zero-shot forwards).
One template gives exactly the single-prompt detections.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from adapt.model.head import HeadOutputs
from adapt.model.language import TextFeatures
from adapt.model.postprocess import class_scores


def _mean(tensors: Sequence[Tensor]) -> Tensor:
    """Mean over prompts; one prompt is returned as it is (bit-exact single-prompt detections)."""
    if len(tensors) == 1:
        return tensors[0]
    return torch.stack(list(tensors)).mean(dim=0)


def label_maps_of(
    texts: Sequence[TextFeatures], label_maps: Sequence[Mapping[int, Sequence[int]]]
) -> list[dict[int, list[int]]]:
    """The prompts' label -> token maps, checked: one per text, every prompt grounding the same labels."""
    if not texts or len(texts) != len(label_maps):
        raise ValueError(
            f"a prompt ensemble needs one label map per prompt ({len(texts)} texts, {len(label_maps)} maps)"
        )
    maps = [{int(k): [int(t) for t in v] for k, v in m.items()} for m in label_maps]
    labels = set(maps[0])
    if any(set(m) != labels for m in maps):
        raise ValueError("every prompt of an ensemble must ground the same labels")
    return maps


def combine_prompts(
    outputs: Sequence[HeadOutputs], maps: Sequence[dict[int, list[int]]]
) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """Per level, the prompts' head outputs combined per anchor: box deltas [B, 4, H, W], centerness
    probabilities [B, HW] and class scores [B, HW, C], each the mean over prompts (what
    ``PostProcessor.forward_scores`` takes). ``outputs[j]`` was computed with the prompt of ``maps[j]``.
    """
    num_classes = max(maps[0], default=0)
    bbox_reg, centerness, scores = [], [], []
    for level in range(len(outputs[0].bbox_reg)):
        batch = outputs[0].bbox_reg[level].shape[0]
        bbox_reg.append(_mean([o.bbox_reg[level] for o in outputs]))
        centerness.append(_mean([o.centerness[level].reshape(batch, -1).sigmoid() for o in outputs]))
        scores.append(
            _mean(
                [
                    class_scores(o.dot_product_logits[level].sigmoid(), m, num_classes)
                    for o, m in zip(outputs, maps, strict=True)
                ]
            )
        )
    return bbox_reg, centerness, scores
