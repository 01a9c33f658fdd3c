"""ATSS box coder of GLIP: centre/size deltas with weights (10, 10, 5, 5) on the +1 pixel grid.

maskrcnn_benchmark's legacy convention: a box [x1, y1, x2, y2] is (x2 - x1 + 1) wide and centred at
(x1 + x2) / 2. Encode and decode follow the official operation order so that round trips and the
loss targets (which the official loss decodes again) agree to the last bit where possible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["BoxCoder"]

# Official legacy +1 convention (maskrcnn_benchmark TO_REMOVE = 1).
TO_REMOVE = 1.0


class BoxCoder:
    """Encodes boxes relative to anchors and back; ``deltas`` channels are (dx, dy, dw, dh)."""

    def __init__(
        self,
        weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
        bbox_xform_clip: float = math.log(1000.0 / 16),
    ) -> None:
        self.weights = tuple(float(w) for w in weights)
        # Official clamp of dw/dh before exp(): keeps a wild prediction from overflowing.
        self.bbox_xform_clip = bbox_xform_clip

    def encode(self, gt: Tensor, anchors: Tensor) -> Tensor:
        """Regression targets [N, 4] of boxes ``gt`` [N, 4] w.r.t. ``anchors`` [N, 4] (both xyxy)."""
        wx, wy, ww, wh = self.weights
        a_w = anchors[:, 2] - anchors[:, 0] + TO_REMOVE
        a_h = anchors[:, 3] - anchors[:, 1] + TO_REMOVE
        a_cx = (anchors[:, 2] + anchors[:, 0]) / 2
        a_cy = (anchors[:, 3] + anchors[:, 1]) / 2
        g_w = gt[:, 2] - gt[:, 0] + TO_REMOVE
        g_h = gt[:, 3] - gt[:, 1] + TO_REMOVE
        g_cx = (gt[:, 2] + gt[:, 0]) / 2
        g_cy = (gt[:, 3] + gt[:, 1]) / 2
        dx = wx * (g_cx - a_cx) / a_w
        dy = wy * (g_cy - a_cy) / a_h
        dw = ww * torch.log(g_w / a_w)
        dh = wh * torch.log(g_h / a_h)
        return torch.stack((dx, dy, dw, dh), dim=1)

    def decode(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        """Boxes [N, 4] xyxy from ``deltas`` [N, 4] and ``anchors`` [N, 4]; not clipped."""
        anchors = anchors.to(deltas.dtype)
        wx, wy, ww, wh = self.weights
        a_w = anchors[:, 2] - anchors[:, 0] + TO_REMOVE
        a_h = anchors[:, 3] - anchors[:, 1] + TO_REMOVE
        a_cx = (anchors[:, 2] + anchors[:, 0]) / 2
        a_cy = (anchors[:, 3] + anchors[:, 1]) / 2
        dx = deltas[:, 0] / wx
        dy = deltas[:, 1] / wy
        dw = (deltas[:, 2] / ww).clamp(max=self.bbox_xform_clip)
        dh = (deltas[:, 3] / wh).clamp(max=self.bbox_xform_clip)
        cx = dx * a_w + a_cx
        cy = dy * a_h + a_cy
        w = torch.exp(dw) * a_w
        h = torch.exp(dh) * a_h
        # +1 convention: a box of width w spans x1 .. x1 + w - 1.
        return torch.stack(
            (
                cx - 0.5 * (w - TO_REMOVE),
                cy - 0.5 * (h - TO_REMOVE),
                cx + 0.5 * (w - TO_REMOVE),
                cy + 0.5 * (h - TO_REMOVE),
            ),
            dim=1,
        )

    def __repr__(self) -> str:
        return f"BoxCoder(weights={self.weights}, bbox_xform_clip={self.bbox_xform_clip:.4f})"
