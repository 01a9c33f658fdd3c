"""ATSS anchors equal the official ones, location by location."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adapt.model.anchors import AnchorGenerator
from adapt.model.config import AnchorConfig

ORACLE = Path(__file__).resolve().parents[1] / "fixtures" / "glip_mini_oracle"
LEVEL_SIZES = [(32, 40), (16, 20), (8, 10), (4, 5), (2, 3)]  # padded batch 256 x 320


def test_anchors_equal_oracle_exactly(oracle):
    cfg = AnchorConfig()
    anchors = AnchorGenerator(cfg.sizes, cfg.strides)(LEVEL_SIZES)
    assert len(anchors) == 5
    for ours, ref, (h, w) in zip(anchors, oracle["eval"]["anchors"], LEVEL_SIZES, strict=True):
        assert ours.shape == (h * w, 4) and ours.dtype == torch.float32
        assert torch.equal(ours, ref)


def test_cell_anchors_equal_checkpoint_buffers():
    sd = torch.load(ORACLE / "mini_glip.pth", weights_only=True)["model"]
    for level, cell in enumerate(AnchorGenerator().cell_anchors):
        assert torch.equal(cell, sd[f"rpn.anchor_generator.cell_anchors.{level}"])
    assert AnchorGenerator().cell_anchors[0].tolist() == [[-28.0, -28.0, 35.0, 35.0]]
    assert AnchorGenerator().cell_anchors[4].tolist() == [[-448.0, -448.0, 575.0, 575.0]]


def test_row_major_order_and_closed_form():
    (anchors,) = AnchorGenerator(sizes=[64], strides=[8])([(3, 5)])
    # location index = y * W + x
    y, x = 2, 3
    s, S = 8, 64
    c = (s - 1) / 2
    expected = [
        s * x + c - (S - 1) / 2,
        s * y + c - (S - 1) / 2,
        s * x + c + (S - 1) / 2,
        s * y + c + (S - 1) / 2,
    ]
    assert anchors[y * 5 + x].tolist() == expected
    widths = anchors[:, 2] - anchors[:, 0] + 1  # +1 convention: the anchor is S wide
    assert torch.all(widths == S)


def test_mismatched_sizes_and_strides_rejected():
    with pytest.raises(ValueError):
        AnchorGenerator(sizes=[64, 128], strides=[8])
