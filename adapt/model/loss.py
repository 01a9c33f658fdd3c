"""GLIP's ATSS training loss: anchor assignment, token focal loss, GIoU and centerness.

Reproduces the official ``ATSSLossComputation`` with ``dot_product_logits`` (GLIP's grounding
loss). The legacy 80-class ``loss_cls`` is left out: the official code multiplies it by 0.
Everything runs in float32 (official: the loss is wrapped in ``custom_fwd(cast_inputs=float32)``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_iou, generalized_box_iou_loss, sigmoid_focal_loss

from adapt.model.box_coder import BoxCoder

__all__ = ["ATSSLoss", "atss_assign", "legacy_box_iou"]


def legacy_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU [N, M] on maskrcnn_benchmark's +1 grid (width = x2 - x1 + 1), via torchvision.

    Shifting x2, y2 by +1 turns torchvision's continuous IoU into the legacy one (``boxlist_iou``).
    """
    shift = boxes1.new_tensor([0.0, 0.0, 1.0, 1.0])
    return box_iou(boxes1 + shift, boxes2 + shift)


def closest_per_level(distances: Tensor, level_sizes: Sequence[int], topk: int) -> Tensor:
    """ATSS candidates: per level, the ``topk`` anchors closest to each GT centre.

    ``distances`` [A, G] over the levels' anchors concatenated; returns anchor indices [K, G],
    K = sum_l min(topk, A_l) (official: a level with fewer anchors contributes all of them).
    """
    candidates, start = [], 0
    for size in level_sizes:
        k = min(topk, size)
        _, idx = distances[start : start + size].topk(k, dim=0, largest=False)  # [k, G]
        candidates.append(idx + start)
        start += size
    return torch.cat(candidates, dim=0)


def atss_assign(
    anchors_per_level: Sequence[Tensor], gt_boxes: Tensor, topk: int = 9
) -> tuple[Tensor, Tensor]:
    """ATSS assignment of one image's anchors to its GT boxes.

    Per GT: the ``topk`` anchors per level whose centres are closest to the GT centre are
    candidates; a candidate is positive if its IoU >= mean + std (unbiased) of the candidates' IoUs
    and its centre lies inside the GT by more than 0.01 px; an anchor claimed by several GTs goes
    to the one with the highest IoU.

    Args:
        anchors_per_level: per level [A_l, 4] xyxy.
        gt_boxes: [G, 4] xyxy (+1 convention).

    Returns:
        ``matched`` [A] int64: index of the assigned GT, -1 for background; ``ious`` [A, G].
    """
    anchors = torch.cat(list(anchors_per_level), dim=0)  # [A, 4], levels P3..P7 concatenated
    num_anchors, num_gt = anchors.shape[0], gt_boxes.shape[0]
    if num_gt == 0:
        # Not reachable in official training (it skips such batches); everything is background.
        return torch.full((num_anchors,), -1, dtype=torch.int64, device=anchors.device), anchors.new_zeros(
            (num_anchors, 0)
        )

    ious = legacy_box_iou(anchors, gt_boxes)  # [A, G]
    anchor_centres = torch.stack(
        ((anchors[:, 0] + anchors[:, 2]) / 2.0, (anchors[:, 1] + anchors[:, 3]) / 2.0), dim=1
    )  # [A, 2]
    gt_centres = torch.stack(
        ((gt_boxes[:, 0] + gt_boxes[:, 2]) / 2.0, (gt_boxes[:, 1] + gt_boxes[:, 3]) / 2.0), dim=1
    )  # [G, 2]
    # Official form (not cdist) so that rounding, and hence ties at the top-k cut, are identical.
    distances = (anchor_centres[:, None, :] - gt_centres[None, :, :]).pow(2).sum(-1).sqrt()  # [A, G]

    candidates = closest_per_level(distances, [a.shape[0] for a in anchors_per_level], topk)  # [K, G]
    gt_index = torch.arange(num_gt, device=anchors.device).expand_as(candidates)  # [K, G]
    candidate_ious = ious[candidates, gt_index]  # [K, G]
    threshold = candidate_ious.mean(0) + candidate_ious.std(0)  # unbiased std, as torch.std
    is_pos = candidate_ious >= threshold[None, :]

    # Candidate centre strictly inside its GT: min(l, t, r, b) > 0.01 (official margin).
    cx = anchor_centres[candidates, 0]  # [K, G]
    cy = anchor_centres[candidates, 1]
    inside = (
        torch.stack(
            (cx - gt_boxes[:, 0], cy - gt_boxes[:, 1], gt_boxes[:, 2] - cx, gt_boxes[:, 3] - cy), dim=1
        ).amin(dim=1)
        > 0.01
    )
    is_pos &= inside

    # Official layout: a [G, A] matrix of -inf with the positives' IoUs, transposed, max over G.
    masked = torch.full((num_gt, num_anchors), -torch.inf, dtype=ious.dtype, device=ious.device)
    masked[gt_index[is_pos], candidates[is_pos]] = ious[candidates[is_pos], gt_index[is_pos]]
    best_iou, matched = masked.t().max(dim=1)  # [A]
    matched[best_iou == -torch.inf] = -1
    return matched, ious


def _mean_over_processes(value: Tensor) -> Tensor:
    """Official ``reduce_sum(x) / num_gpus``: normalisers are averaged over data-parallel workers."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value)
        value = value / dist.get_world_size()
    return value


class ATSSLoss(nn.Module):
    """Training losses of GLIP's ATSS head (official ``ATSSLossComputation``, grounding variant).

    Inputs per FPN level l: ``bbox_reg[l]`` [B, 4, H_l, W_l], ``centerness[l]`` [B, 1, H_l, W_l],
    ``dot_product_logits[l]`` [B, H_l*W_l, T]; ``anchors[l]`` [H_l*W_l, 4] shared by the batch;
    ``targets[b]`` = dict(boxes=[n, 4] xyxy, positive_map=[n, L]) with L >= T (usually 256);
    ``text_mask`` [B, >=T] = the tokenizer attention mask. T < L is allowed (only the first T token
    positions are scored), which is how the oracle fixture stores logits.
    """

    def __init__(
        self,
        topk: int = 9,
        reg_loss_weight: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        box_coder: BoxCoder | None = None,
    ) -> None:
        super().__init__()
        self.topk = topk
        self.reg_loss_weight = reg_loss_weight
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.box_coder = box_coder or BoxCoder()

    def extra_repr(self) -> str:
        return (
            f"topk={self.topk}, reg_loss_weight={self.reg_loss_weight}, "
            f"focal_alpha={self.focal_alpha}, focal_gamma={self.focal_gamma}"
        )

    def prepare_targets(
        self, anchors: Sequence[Tensor], targets: Sequence[dict[str, Tensor]], num_tokens: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Per-anchor targets of the batch.

        Returns:
            ``matched`` [B, A] (GT index or -1), ``reg_targets`` [B, A, 4] (encoded matched GT;
            meaningless for background), ``token_targets`` [B, A, num_tokens].
        """
        all_anchors = torch.cat(list(anchors), dim=0).float()  # [A, 4]
        matched_all, reg_all, tokens_all = [], [], []
        for target in targets:
            boxes = target["boxes"].to(all_anchors).reshape(-1, 4)
            pos_map = target["positive_map"].to(all_anchors)
            if pos_map.shape[0] != boxes.shape[0]:
                raise ValueError(f"positive_map has {pos_map.shape[0]} rows for {boxes.shape[0]} boxes")
            if pos_map.shape[1] < num_tokens:
                raise ValueError(f"positive_map is {pos_map.shape[1]} tokens wide, logits have {num_tokens}")
            matched, _ = atss_assign([a.float() for a in anchors], boxes, self.topk)
            is_bg = matched < 0
            index = matched.clamp(min=0)

            if boxes.shape[0] > 0:
                token_targets = pos_map[index]  # [A, L]
                matched_boxes = boxes[index]  # [A, 4]
            else:
                token_targets = pos_map.new_zeros((all_anchors.shape[0], pos_map.shape[1]))
                matched_boxes = all_anchors.clone()
            # Official "[NoObj]" target: background anchors are positive on the *last* position of
            # the full-length map (255), a [PAD] that the text mask removes unless the caption
            # fills all 256 tokens. Built at full width L, then cut to the T scored positions.
            no_obj = torch.zeros_like(token_targets[0])
            no_obj[-1] = 1.0
            token_targets[is_bg] = no_obj
            tokens_all.append(token_targets[:, :num_tokens])
            reg_all.append(self.box_coder.encode(matched_boxes, all_anchors))
            matched_all.append(matched)
        return torch.stack(matched_all), torch.stack(reg_all), torch.stack(tokens_all)

    def centerness_targets(self, reg_targets: Tensor, anchors: Tensor) -> Tensor:
        """sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)) of the anchor centre inside its GT, [N].

        Official quirk: the GT is recovered by decoding the regression targets rather than used
        directly, which changes the last bits; kept for bit-level agreement.
        """
        gt = self.box_coder.decode(reg_targets, anchors)
        cx = (anchors[:, 2] + anchors[:, 0]) / 2
        cy = (anchors[:, 3] + anchors[:, 1]) / 2
        lr = torch.stack((cx - gt[:, 0], gt[:, 2] - cx), dim=1)
        tb = torch.stack((cy - gt[:, 1], gt[:, 3] - cy), dim=1)
        return torch.sqrt((lr.amin(1) / lr.amax(1)) * (tb.amin(1) / tb.amax(1)))

    def giou_loss(self, deltas: Tensor, reg_targets: Tensor, anchors: Tensor, weight: Tensor) -> Tensor:
        """Centerness-weighted sum of 1 - GIoU between decoded predictions and decoded targets.

        Official GIoU: areas without +1 and the predicted x2/y2 clamped to >= x1/y1 before anything
        else. torchvision's loss then matches it: same intersection mask and the same 1e-7 on the
        union and enclosing area (the official adds it to both terms of enclosing - union, which
        cancels).
        """
        pred = self.box_coder.decode(deltas, anchors)
        pred = torch.cat((pred[:, :2], torch.maximum(pred[:, :2], pred[:, 2:])), dim=1)
        gt = self.box_coder.decode(reg_targets, anchors)
        losses = generalized_box_iou_loss(pred, gt, reduction="none", eps=1e-7)  # [N]
        if weight.sum() > 0:  # official: unweighted sum when every weight is 0
            return (losses * weight).sum()
        return losses.sum()

    def forward(
        self,
        bbox_reg: Sequence[Tensor],
        centerness: Sequence[Tensor],
        dot_product_logits: Sequence[Tensor],
        anchors: Sequence[Tensor],
        targets: Sequence[dict[str, Tensor]],
        text_mask: Tensor,
    ) -> dict[str, Tensor]:
        """Losses of one batch: ``loss_reg``, ``loss_centerness``, ``loss_dot_product_token``, ``total``."""
        batch = bbox_reg[0].shape[0]
        if len(targets) != batch:
            raise ValueError(f"{len(targets)} targets for a batch of {batch}")
        # Flatten every level to the location axis (y * W_l + x) and concatenate P3..P7, in fp32.
        deltas = torch.cat([r.float().permute(0, 2, 3, 1).reshape(batch, -1, 4) for r in bbox_reg], dim=1)
        ctr_logits = torch.cat([c.float().reshape(batch, -1) for c in centerness], dim=1)  # [B, A]
        logits = torch.cat([d.float() for d in dot_product_logits], dim=1)  # [B, A, T]
        all_anchors = torch.cat(list(anchors), dim=0).float()  # [A, 4]
        num_tokens = logits.shape[2]

        matched, reg_targets, token_targets = self.prepare_targets(anchors, targets, num_tokens)
        pos = (matched >= 0).reshape(-1)  # [B*A]
        num_pos = _mean_over_processes(pos.sum().to(logits.dtype)).clamp(min=1.0)

        # Token loss: binary sigmoid focal loss over (anchor, token) pairs whose token is real
        # (attention mask 1: [CLS], [SEP] and the ". " pieces count as negatives), summed.
        mask = (text_mask[:, :num_tokens] > 0)[:, None, :].expand_as(logits)  # [B, A, T]
        loss_token = (
            sigmoid_focal_loss(
                logits[mask],
                token_targets[mask],
                alpha=self.focal_alpha,
                gamma=self.focal_gamma,
                reduction="sum",
            )
            / num_pos
        )

        deltas = deltas.reshape(-1, 4)[pos]
        reg_targets = reg_targets.reshape(-1, 4)[pos]
        ctr_logits = ctr_logits.reshape(-1)[pos]
        pos_anchors = all_anchors.repeat(batch, 1)[pos]  # anchors are shared by the batch
        ctr_targets = self.centerness_targets(reg_targets, pos_anchors)
        # Reduced on every rank, positives or not: a collective that only some ranks enter hangs.
        ctr_sum = _mean_over_processes(ctr_targets.sum().detach())
        if pos.any():
            loss_reg = self.giou_loss(deltas, reg_targets, pos_anchors, ctr_targets) / ctr_sum
            loss_ctr = F.binary_cross_entropy_with_logits(ctr_logits, ctr_targets, reduction="sum") / num_pos
        else:
            # Official: zero losses that stay connected to the graph.
            loss_reg = deltas.sum()
            loss_ctr = ctr_logits.sum() * 0
        loss_reg = loss_reg * self.reg_loss_weight
        return {
            "loss_reg": loss_reg,
            "loss_centerness": loss_ctr,
            "loss_dot_product_token": loss_token,
            "total": loss_reg + loss_ctr + loss_token,
        }
