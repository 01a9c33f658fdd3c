"""GLIP's post-processing in numpy, operation for operation as adapt computes it in torch.

The deployed graph stops at per-level class scores, centerness and box deltas; from there this
module reproduces ``adapt.model.postprocess.PostProcessor`` and ``adapt.detector.Detector`` (their
docstrings give the official reasons for each step): the score threshold on the class score, the
per-level top ``pre_nms_top_n`` of class score x centerness, decoding against the ATSS anchors on
the +1 grid, clipping, the square root of the score, class-wise greedy NMS with torchvision's IoU
and tie rules, the kthvalue cut, the final best-first ``detections_per_image`` and the scaling back
to the original image. Every step is float32 arithmetic in the same order as adapt's, so boxes and
scores agree to the rounding of the graph's outputs; the order-dependent steps (NMS, top-k) are
why this is numpy and not ONNX's ``NonMaxSuppression``, whose IoU and tie order differ.

numpy only: the deployed runtime imports neither torch nor torchvision.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

F32 = np.float32


@dataclass
class Settings:
    """The recorded inference settings, anchors and box coder of a deployed file."""

    score_threshold: float
    pre_nms_top_n: int
    nms_threshold: float
    detections_per_image: int
    anchor_sizes: tuple[int, ...]
    anchor_strides: tuple[int, ...]
    box_weights: tuple[float, float, float, float]
    bbox_xform_clip: float

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any]) -> Settings:
        inf, anchors, coder = meta["inference"], meta["anchors"], meta["box_coder"]
        return cls(
            score_threshold=float(inf["score_threshold"]),
            pre_nms_top_n=int(inf["pre_nms_top_n"]),
            nms_threshold=float(inf["nms_threshold"]),
            detections_per_image=int(inf["detections_per_image"]),
            anchor_sizes=tuple(int(v) for v in anchors["sizes"]),
            anchor_strides=tuple(int(v) for v in anchors["strides"]),
            box_weights=tuple(float(v) for v in coder["weights"]),  # type: ignore[arg-type]
            bbox_xform_clip=float(coder["bbox_xform_clip"]),
        )


def anchors(height: int, width: int, size: int, stride: int) -> np.ndarray:
    """ATSS anchors [H*W, 4] of one level, row-major (``adapt.model.anchors``: exact in float32)."""
    centre, half = (stride - 1) / 2, (size - 1) / 2
    cell = np.array([centre - half, centre - half, centre + half, centre + half], dtype=F32)
    xs = np.arange(width, dtype=F32) * F32(stride)
    ys = np.arange(height, dtype=F32) * F32(stride)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack((xx, yy, xx, yy), axis=-1).reshape(-1, 4) + cell


def decode(deltas: np.ndarray, anchor: np.ndarray, weights: Sequence[float], clip: float) -> np.ndarray:
    """``BoxCoder.decode``: centre/size deltas -> xyxy boxes on the +1 grid, not clipped."""
    wx, wy, ww, wh = (F32(w) for w in weights)
    a_w = anchor[:, 2] - anchor[:, 0] + F32(1)
    a_h = anchor[:, 3] - anchor[:, 1] + F32(1)
    a_cx = (anchor[:, 2] + anchor[:, 0]) / F32(2)
    a_cy = (anchor[:, 3] + anchor[:, 1]) / F32(2)
    dx = deltas[:, 0] / wx
    dy = deltas[:, 1] / wy
    dw = np.minimum(deltas[:, 2] / ww, F32(clip))
    dh = np.minimum(deltas[:, 3] / wh, F32(clip))
    cx = dx * a_w + a_cx
    cy = dy * a_h + a_cy
    w = np.exp(dw) * a_w
    h = np.exp(dh) * a_h
    half_w, half_h = F32(0.5) * (w - F32(1)), F32(0.5) * (h - F32(1))
    return np.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), axis=1)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS as torchvision's CPU kernel: stable descending score order, float32 IoU
    ``inter / (area_i + area_j - inter)``, suppression iff IoU > threshold; kept indices best first."""
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    order = np.argsort(-scores, kind="stable")
    suppressed = np.zeros(len(scores), dtype=bool)
    threshold = F32(iou_threshold)
    keep = []
    for pos, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = order[pos + 1 :]
        rest = rest[~suppressed[rest]]
        if rest.size == 0:
            break
        w = np.maximum(F32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(F32(0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        suppressed[rest[iou > threshold]] = True
    return np.asarray(keep, dtype=np.int64)


def class_wise_nms(
    boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float
) -> np.ndarray:
    """``adapt.model.postprocess.class_wise_nms``: per label, IoU on the +1 grid (x2, y2 shifted by
    one); kept indices in ascending original order. The threshold is rounded to float32 first."""
    shifted = boxes + np.array([0, 0, 1, 1], dtype=F32)
    threshold = float(F32(iou_threshold))
    keep = np.zeros(len(scores), dtype=bool)
    for label in np.unique(labels):
        idx = np.nonzero(labels == label)[0]
        keep[idx[nms(shifted[idx], scores[idx], threshold)]] = True
    return np.nonzero(keep)[0]


def level_candidates(
    deltas: np.ndarray,
    centerness: np.ndarray,
    scores: np.ndarray,
    image_hw: tuple[int, int],
    level: int,
    s: Settings,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's candidates of one level (``PostProcessor.forward_level``): boxes, scores, labels.

    ``deltas`` [H, W, 4], ``centerness`` [H, W] (sigmoid), ``scores`` [H, W, C] class scores.
    """
    height, width = centerness.shape
    scores = scores.reshape(height * width, -1)
    ctr = centerness.reshape(-1)
    candidates = scores > F32(s.score_threshold)  # on the class score, before centerness
    ranked = scores * ctr[:, None]
    loc, col = np.nonzero(candidates)  # row-major (location, class), as torch.nonzero
    values = ranked[loc, col]
    k = min(len(values), s.pre_nms_top_n)
    if k < len(values):
        # The k best (adapt's topk(sorted=False) leaves their order to the implementation; ties at the
        # cut keep the earliest), kept in row-major order.
        best = np.sort(np.argsort(-values, kind="stable")[:k])
        loc, col, values = loc[best], col[best], values[best]
    grid = anchors(height, width, s.anchor_sizes[level], s.anchor_strides[level])
    boxes = decode(deltas.reshape(-1, 4)[loc], grid[loc], s.box_weights, s.bbox_xform_clip)
    h, w = image_hw
    # clip_to_image on the +1 grid: [0, w - 1] x [0, h - 1]
    boxes = np.stack(
        (
            np.clip(boxes[:, 0], 0, w - 1),
            np.clip(boxes[:, 1], 0, h - 1),
            np.clip(boxes[:, 2], 0, w - 1),
            np.clip(boxes[:, 3], 0, h - 1),
        ),
        axis=1,
    ).astype(F32)
    return boxes, np.sqrt(values), (col + 1).astype(np.int64)


def detect(
    levels: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    image_hw: tuple[int, int],
    original_hw: tuple[int, int],
    s: Settings,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's detections in original pixels, best first: boxes [n, 4] xyxy, scores [n], labels [n].

    ``levels``: per FPN level (deltas [H, W, 4], centerness [H, W], scores [H, W, C]) of this image;
    ``image_hw`` the resized, un-padded size; ``original_hw`` the file's.
    """
    found = [level_candidates(d, c, sc, image_hw, i, s) for i, (d, c, sc) in enumerate(levels)]
    boxes = np.concatenate([f[0] for f in found]).reshape(-1, 4)
    scores = np.concatenate([f[1] for f in found]).astype(F32)
    labels = np.concatenate([f[2] for f in found])
    keep = class_wise_nms(boxes, scores, labels, s.nms_threshold)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    n = len(scores)
    if n > s.detections_per_image > 0:
        # kthvalue cut: everything tied with the k-th best survives this step
        threshold = np.sort(scores)[n - s.detections_per_image]
        keep = np.nonzero(scores >= threshold)[0]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    # Detector._merge: best first (stable), at most detections_per_image
    order = np.argsort(-scores, kind="stable")[: s.detections_per_image]
    boxes, scores, labels = boxes[order], scores[order], labels[order]
    # BoxList.resize: per-axis ratios in float32, no +1
    ratio_h, ratio_w = original_hw[0] / image_hw[0], original_hw[1] / image_hw[1]
    boxes = boxes * np.array([ratio_w, ratio_h, ratio_w, ratio_h], dtype=F32)
    return boxes, scores, labels
