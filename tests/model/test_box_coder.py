"""The (10, 10, 5, 5) +1-convention box coder, formula by formula (fixture README "Box coder")."""

from __future__ import annotations

import math

import torch

from adapt.model.box_coder import BoxCoder

ANCHOR = torch.tensor([[-28.0, -28.0, 35.0, 35.0]])  # P3 location (0, 0): 64 wide, centre 3.5
GT = torch.tensor([[30.0, 40.0, 150.0, 160.0]])  # 121 x 121, centre (90, 100)


def test_encode_formula():
    d = BoxCoder().encode(GT, ANCHOR)[0].double()
    expected = [10 * (90 - 3.5) / 64, 10 * (100 - 3.5) / 64, 5 * math.log(121 / 64), 5 * math.log(121 / 64)]
    assert torch.allclose(d, torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=0)


def test_decode_formula():
    deltas = torch.tensor([[1.0, -2.0, 0.5, -0.25]])
    box = BoxCoder().decode(deltas, ANCHOR)[0].double()
    cx, cy = 1.0 / 10 * 64 + 3.5, -2.0 / 10 * 64 + 3.5
    w, h = math.exp(0.5 / 5) * 64, math.exp(-0.25 / 5) * 64
    expected = [cx - (w - 1) / 2, cy - (h - 1) / 2, cx + (w - 1) / 2, cy + (h - 1) / 2]
    assert torch.allclose(box, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-4)


def test_zero_deltas_give_the_anchor_back():
    assert torch.equal(BoxCoder().decode(torch.zeros(1, 4), ANCHOR), ANCHOR)


def test_decode_clamps_dw_dh():
    box = BoxCoder().decode(torch.tensor([[0.0, 0.0, 100.0, 5 * math.log(2)]]), ANCHOR)[0]
    width = box[2] - box[0] + 1
    height = box[3] - box[1] + 1
    assert abs(width.item() - 1000 / 16 * 64) < 1e-2  # clamped at log(1000/16)
    assert abs(height.item() - 128) < 1e-4  # below the clamp: untouched


def test_round_trip():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(500, 2, generator=g, dtype=torch.float64) * 600
    wh = torch.rand(500, 2, generator=g, dtype=torch.float64) * 300 + 1
    boxes = torch.cat([xy, xy + wh], dim=1)
    anchors = torch.cat([xy + 20, xy + 20 + 63], dim=1).flip(0)
    coder = BoxCoder()
    assert torch.allclose(coder.decode(coder.encode(boxes, anchors), anchors), boxes, rtol=0, atol=1e-9)
    b32, a32 = boxes.float(), anchors.float()
    assert torch.allclose(coder.decode(coder.encode(b32, a32), a32), b32, rtol=0, atol=2e-3)
