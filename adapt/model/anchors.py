"""ATSS anchors: one square anchor per feature-map location, on the legacy +1 pixel grid.

GLIP inherits maskrcnn_benchmark's anchor generator. With one aspect ratio and one scale per
octave (the official ATSS settings) its Detectron-style cell anchor reduces to a closed form, which
is what this module computes: for stride s and size S the anchor of location (x, y) is centred at
(s*x + (s-1)/2, s*y + (s-1)/2) with +1-convention width S, i.e.
``[c - (S-1)/2, c - (S-1)/2, c + (S-1)/2, c + (S-1)/2]`` (P3 at (0, 0): [-28, -28, 35, 35]).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["AnchorGenerator"]


class AnchorGenerator(nn.Module):
    """Anchors of every FPN level for given feature-map sizes.

    Anchors depend on the (padded) feature-map size only, not on the image, so one set serves the
    whole batch. Nothing is stored in the state dict: the official checkpoint's
    ``rpn.anchor_generator.cell_anchors.{l}`` buffers can be checked against :attr:`cell_anchors`.
    """

    def __init__(
        self,
        sizes: Sequence[int] = (64, 128, 256, 512, 1024),
        strides: Sequence[int] = (8, 16, 32, 64, 128),
    ) -> None:
        super().__init__()
        if len(sizes) != len(strides):
            raise ValueError(f"{len(sizes)} anchor sizes for {len(strides)} strides")
        self.sizes = tuple(int(s) for s in sizes)
        self.strides = tuple(int(s) for s in strides)

    @property
    def cell_anchors(self) -> list[Tensor]:
        """Anchor of location (0, 0) per level, [1, 4] float32 (official ``cell_anchors`` layout)."""
        return self._cells(None)

    def _cells(self, device: torch.device | None) -> list[Tensor]:
        # Made on the feature maps' device: a CPU tensor here would be copied to the GPU every step.
        out = []
        for size, stride in zip(self.sizes, self.strides, strict=True):
            centre = (stride - 1) / 2
            half = (size - 1) / 2
            corners = [[centre - half, centre - half, centre + half, centre + half]]
            out.append(torch.tensor(corners, dtype=torch.float32, device=device))
        return out

    def forward(
        self, feature_sizes: Sequence[tuple[int, int]], device: torch.device | None = None
    ) -> list[Tensor]:
        """Per level l, anchors [H_l * W_l, 4] float32 xyxy, location index = y * W_l + x.

        The row-major (y outer, x inner) order matches how the head's outputs are flattened.
        """
        anchors = []
        for (height, width), cell, stride in zip(
            feature_sizes, self._cells(device), self.strides, strict=True
        ):
            # Official grid_anchors: float32 shifts arange(0, W*s, s), meshgrid (y outer), added to the cell.
            shift_x = torch.arange(0, width * stride, step=stride, dtype=torch.float32, device=device)
            shift_y = torch.arange(0, height * stride, step=stride, dtype=torch.float32, device=device)
            yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")  # [H, W] each
            shifts = torch.stack((xx, yy, xx, yy), dim=-1).reshape(-1, 4)  # [H*W, 4]
            anchors.append(shifts + cell)
        return anchors

    def extra_repr(self) -> str:
        return f"sizes={self.sizes}, strides={self.strides}"
