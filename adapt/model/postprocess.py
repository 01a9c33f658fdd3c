"""GLIP's ATSS post-processing: token probabilities -> class scores -> boxes, NMS, top-k.

Reproduces the official ``ATSSPostProcessor`` (with ``dot_product_logits``, ``SCORE_AGG`` "MEAN")
followed by ``select_over_all_levels`` (class-wise ``ml_nms`` and the kthvalue top-k cut).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.ops import nms

from adapt.model.box_coder import BoxCoder

__all__ = ["PostProcessor", "class_scores", "class_wise_nms"]


def class_scores(token_probs: Tensor, label_to_tokens: dict[int, list[int]], num_classes: int) -> Tensor:
    """Per-class score = mean of the class's token probabilities (official ``SCORE_AGG`` "MEAN").

    Args:
        token_probs: [..., T] sigmoid of the dot-product logits.
        label_to_tokens: 1-based label -> token positions (< T).
        num_classes: width of the result; column j holds label j + 1 and labels absent from the
            prompt stay 0, so they never pass the score threshold.

    Returns:
        [..., num_classes] scores.
    """
    scores = token_probs.new_zeros((*token_probs.shape[:-1], num_classes))
    for label, tokens in label_to_tokens.items():
        # A plain mean over the listed positions (not a matmul with 1/n weights) keeps the official rounding.
        scores[..., label - 1] = token_probs[..., tokens].mean(-1)
    return scores


def class_wise_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """Indices kept by per-label NMS, in ascending original order (as the official ``ml_nms`` returns them).

    Official CUDA ``ml_nms`` semantics: boxes only suppress boxes of the same label, IoU on the
    legacy +1 grid (reproduced by shifting x2, y2 by +1), suppression iff IoU > threshold, equal
    scores keep their input order (torchvision's ``nms`` sorts stably). One ``nms`` call per label
    rather than ``batched_nms``: its coordinate-offset trick (used below 4000 elements on CPU and
    100k on GPU) adds label * (max coordinate + 1) to every box, which at float32 costs ~1e-2 px
    of precision for large label ids and can flip decisions near the threshold.
    """
    shifted = boxes + boxes.new_tensor([0.0, 0.0, 1.0, 1.0])
    # The official kernel compares a float32 IoU with a float32 threshold; torchvision's CPU kernel
    # compares it with a double, so an IoU of exactly float32(0.6) would be suppressed there.
    # Rounding the threshold to float32 restores the official decision.
    iou_threshold = float(np.float32(iou_threshold))  # a host scalar: no tensor, no device
    keep = torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    for label in torch.unique(labels):
        idx = torch.nonzero(labels == label).squeeze(1)  # ascending, so stable ties keep input order
        keep[idx[nms(shifted[idx], scores[idx], iou_threshold)]] = True
    return torch.nonzero(keep).squeeze(1)


class PostProcessor(nn.Module):
    """Detections per image from the head outputs of one batch (official ``ATSSPostProcessor``).

    Inputs per FPN level l: ``bbox_reg[l]`` [B, 4, H_l, W_l], ``centerness[l]`` [B, 1, H_l, W_l],
    ``dot_product_logits[l]`` [B, H_l*W_l, T]; ``anchors[l]`` [H_l*W_l, 4]. ``image_sizes`` are the
    un-padded (h, w) of each image (boxes are clipped to them). Returns per image
    dict(boxes=[n, 4] xyxy in network-input pixels, scores=[n], labels=[n] int64 1-based), in the
    order the official code returns them (see :meth:`select_over_all_levels`).
    """

    def __init__(
        self,
        score_threshold: float = 0.05,
        pre_nms_top_n: int = 1000,
        nms_threshold: float = 0.6,
        detections_per_image: int = 100,
        box_coder: BoxCoder | None = None,
    ) -> None:
        super().__init__()
        self.score_threshold = score_threshold
        self.pre_nms_top_n = pre_nms_top_n
        self.nms_threshold = nms_threshold
        self.detections_per_image = detections_per_image
        self.box_coder = box_coder or BoxCoder()

    def extra_repr(self) -> str:
        return (
            f"score_threshold={self.score_threshold}, pre_nms_top_n={self.pre_nms_top_n}, "
            f"nms_threshold={self.nms_threshold}, detections_per_image={self.detections_per_image}"
        )

    def forward_level(
        self,
        bbox_reg: Tensor,
        centerness: Tensor,
        dot_product_logits: Tensor,
        anchors: Tensor,
        image_sizes: Sequence[tuple[int, int]],
        label_to_tokens: dict[int, list[int]],
    ) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Candidates of one level: per image (boxes [k, 4], scores [k], labels [k]), k <= pre_nms_top_n."""
        batch = bbox_reg.shape[0]
        num_classes = max(label_to_tokens, default=0)
        ctr = centerness.reshape(batch, -1).sigmoid()  # [B, HW]
        scores = class_scores(dot_product_logits.sigmoid(), label_to_tokens, num_classes)  # [B, HW, C]
        return self.select_level(bbox_reg, ctr, scores, anchors, image_sizes)

    def select_level(
        self,
        bbox_reg: Tensor,
        centerness_probs: Tensor,
        scores: Tensor,
        anchors: Tensor,
        image_sizes: Sequence[tuple[int, int]],
    ) -> list[tuple[Tensor, Tensor, Tensor]]:
        """:meth:`forward_level` from class scores [B, HW, C] and centerness probabilities [B, HW]
        (a prompt ensemble combines them over prompts first, ``adapt.model.ensemble``)."""
        batch = bbox_reg.shape[0]
        deltas = bbox_reg.permute(0, 2, 3, 1).reshape(batch, -1, 4)  # [B, HW, 4], location = y*W + x
        # Official order of operations: the threshold applies to the class score *before*
        # centerness, the ranking and the reported score use class score x centerness.
        candidates = scores > self.score_threshold  # [B, HW, C]
        scores = scores * centerness_probs[:, :, None]

        out = []
        for b in range(batch):
            cand = candidates[b]
            k = min(int(cand.sum()), self.pre_nms_top_n)
            # Official topk(sorted=False): which candidates survive is well defined (up to ties at
            # the cut), their order is implementation-defined and only affects the output order.
            top_scores, top_idx = scores[b][cand].topk(k, sorted=False)
            loc_cls = torch.nonzero(cand)[top_idx]  # [k, 2] = (location, column), row-major
            loc = loc_cls[:, 0]
            boxes = self.box_coder.decode(deltas[b, loc], anchors[loc])
            h, w = image_sizes[b]
            # Official clip_to_image(remove_empty=False) on the +1 grid: [0, w-1] x [0, h-1].
            boxes = torch.stack(
                (
                    boxes[:, 0].clamp(min=0, max=w - 1),
                    boxes[:, 1].clamp(min=0, max=h - 1),
                    boxes[:, 2].clamp(min=0, max=w - 1),
                    boxes[:, 3].clamp(min=0, max=h - 1),
                ),
                dim=1,
            )
            # Official remove_small_boxes(min_size=0) keeps everything: decoded widths are > 0
            # and clamping cannot make x2 - x1 + 1 negative, so it is not applied.
            # Official quirk: the score is sqrt(class score x centerness) from here on, NMS and
            # the top-k cut included (sqrt can merge neighbouring float32 values into ties).
            out.append((boxes, torch.sqrt(top_scores), loc_cls[:, 1] + 1))
        return out

    def select_over_all_levels(self, boxes: Tensor, scores: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """Class-wise NMS then the top ``detections_per_image``, for one image's concatenated levels.

        Official order kept: NMS returns survivors by original index, and the top-k cut is a
        kthvalue threshold (every detection tied with the k-th best score is kept, so an image
        can return more than ``detections_per_image``) that filters without re-sorting.
        """
        keep = class_wise_nms(boxes, scores, labels, self.nms_threshold)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        n = scores.shape[0]
        if n > self.detections_per_image > 0:
            threshold, _ = torch.kthvalue(scores.cpu(), n - self.detections_per_image + 1)
            keep = torch.nonzero(scores >= threshold.item()).squeeze(1)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        return {"boxes": boxes, "scores": scores, "labels": labels}

    def forward(
        self,
        bbox_reg: Sequence[Tensor],
        centerness: Sequence[Tensor],
        dot_product_logits: Sequence[Tensor],
        anchors: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
        label_to_tokens: dict[int, list[int]],
    ) -> list[dict[str, Tensor]]:
        """Detections of every image of the batch; see the class docstring for shapes."""
        label_to_tokens = {int(k): [int(t) for t in v] for k, v in label_to_tokens.items()}
        num_tokens = dot_product_logits[0].shape[-1]
        bad = {k: v for k, v in label_to_tokens.items() if k < 1 or not v or max(v) >= num_tokens}
        if bad:
            raise ValueError(f"labels must be >= 1 with token positions < {num_tokens}; got {bad}")
        per_level = [
            self.forward_level(r, c, d, a, image_sizes, label_to_tokens)
            for r, c, d, a in zip(bbox_reg, centerness, dot_product_logits, anchors, strict=True)
        ]
        return self.select_over_levels(per_level, len(image_sizes))

    def forward_scores(
        self,
        bbox_reg: Sequence[Tensor],
        centerness_probs: Sequence[Tensor],
        scores: Sequence[Tensor],
        anchors: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        """Detections from per-level class scores [B, HW, C] and centerness probabilities [B, HW]
        instead of token logits (see :meth:`select_level`)."""
        per_level = [
            self.select_level(r, c, s, a, image_sizes)
            for r, c, s, a in zip(bbox_reg, centerness_probs, scores, anchors, strict=True)
        ]
        return self.select_over_levels(per_level, len(image_sizes))

    def select_over_levels(
        self, per_level: Sequence[list[tuple[Tensor, Tensor, Tensor]]], batch: int
    ) -> list[dict[str, Tensor]]:
        """Each image's candidates of all levels, P3..P7 in order, through :meth:`select_over_all_levels`."""
        results = []
        for b in range(batch):
            boxes = torch.cat([level[b][0] for level in per_level])  # levels P3..P7 in order
            scores = torch.cat([level[b][1] for level in per_level])
            labels = torch.cat([level[b][2] for level in per_level])
            results.append(self.select_over_all_levels(boxes, scores, labels))
        return results
