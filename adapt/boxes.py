"""Box conventions: what a detector's xyxy boxes mean, so that every writer turns them into COCO's
xywh the way that detector's authors do.

Two conventions live side by side in adapt, and mixing them moves every box by a pixel:

* GLIP (maskrcnn_benchmark) boxes are *inclusive* pixel corners, width ``x2 - x1 + 1``, in the pixels
  of the resized network input; official evaluation scales them back to the original image
  (``BoxList.resize``: plain ratios) and writes ``w = x2 - x1 + 1``. adapt's data reader produces
  its targets this way (``adapt.data.coco.xywh_to_xyxy``: ``x2 = x + w - 1``).
* transformers' detectors (Grounding DINO, OWLv2: ``adapt.families``) predict *exclusive* corners,
  width ``x2 - x1`` (COCO's own), already in the original image's pixels
  (``post_process_grounded_object_detection`` with ``target_sizes``).

Each detector names its convention (``adapt.detector.Detector.boxes``, ``DetectorFamily.boxes``) and
the COCO writers take it as an argument, so the choice is visible where boxes are written.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class BoxConvention:
    """How a detector's xyxy boxes are read.

    ``plus_one``: width is ``x2 - x1 + 1`` (inclusive corners) instead of ``x2 - x1``;
    ``original_pixels``: boxes are in the original image's pixels, so a writer must not rescale them
    (else they are in the resized network input's and are scaled back by the size ratios).
    """

    name: str
    plus_one: bool
    original_pixels: bool

    def xywh(self, boxes: Tensor) -> Tensor:
        """xyxy -> COCO xywh under this convention."""
        x1, y1, x2, y2 = boxes.unbind(-1)
        extra = 1.0 if self.plus_one else 0.0
        return torch.stack([x1, y1, x2 - x1 + extra, y2 - y1 + extra], dim=-1)


GLIP_BOXES = BoxConvention("glip", plus_one=True, original_pixels=False)
TRANSFORMERS_BOXES = BoxConvention("transformers", plus_one=False, original_pixels=True)


def exclusive_corners(boxes: Tensor) -> Tensor:
    """Inclusive corners (``x2 = x + w - 1``, adapt's data reader) -> exclusive ones (``x2 = x + w``).

    Exact for boxes in the original image's pixels, whatever a horizontal flip did before: GLIP's
    flip (``x1' = W - x2 - 1``) of inclusive corners is transformers' flip (``x1' = W - x2``) of the
    exclusive ones.
    """
    return boxes + boxes.new_tensor([0.0, 0.0, 1.0, 1.0])
