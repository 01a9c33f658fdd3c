"""Official resize rule, +1 flip convention, clipping and the train/test pipelines."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from adapt.data.transforms import (
    RandomHorizontalFlip,
    RandomResize,
    Resize,
    build_transforms,
    clip_boxes,
    resize_shape,
    transforms_from_config,
)


@pytest.mark.parametrize(
    ("hw", "min_size", "max_size", "expected"),
    [
        ((480, 640), 800, 1333, (800, 1066)),  # long side truncated: 800 * 640 / 480 = 1066.67
        ((640, 480), 800, 1333, (1066, 800)),
        ((100, 1000), 800, 1333, (133, 1330)),  # capped: S = int(round(1333 * 100 / 1000)) = 133
        ((800, 1200), 800, 1333, (800, 1200)),  # already at size
        ((320, 320), 800, 1333, (800, 800)),
        ((375, 500), 480, 1333, (480, 640)),
        ((1000, 3000), 800, 1333, (444, 1332)),  # S = round(444.33) = 444; 444 * 3 = 1332
        ((50, 80), 800, None, (800, 1280)),
    ],
)
def test_resize_shape_follows_official_rule(hw, min_size, max_size, expected):
    assert resize_shape(*hw, min_size, max_size) == expected


def test_flip_uses_plus_one_convention():
    image = Image.new("RGB", (100, 50))
    target = {"boxes": torch.tensor([[10.0, 5.0, 19.0, 15.0]]), "size": (50, 100)}
    flipped, out = RandomHorizontalFlip(p=1.0)(image, target)
    assert out["boxes"].tolist() == [[100 - 19 - 1, 5.0, 100 - 10 - 1, 15.0]]
    # flipping twice is the identity, pixels and boxes
    _back, again = RandomHorizontalFlip(p=1.0)(flipped, out)
    assert again["boxes"].tolist() == target["boxes"].tolist()
    assert RandomHorizontalFlip(p=0.0)(image, target)[1]["boxes"] is target["boxes"]


def test_flip_moves_pixels_with_boxes():
    image = Image.new("RGB", (10, 4))
    image.putpixel((2, 1), (255, 0, 0))
    flipped, _ = RandomHorizontalFlip(p=1.0)(image, {"size": (4, 10)})
    assert flipped.getpixel((10 - 2 - 1, 1)) == (255, 0, 0)


def test_resize_scales_boxes_per_axis():
    image = Image.new("RGB", (640, 480))
    target = {"boxes": torch.tensor([[64.0, 48.0, 639.0, 479.0]]), "size": (480, 640)}
    out_image, out = Resize(800, 1333)(image, target)
    assert out_image.size == (1066, 800) and out["size"] == (800, 1066)
    assert torch.allclose(
        out["boxes"], torch.tensor([[64 * 1066 / 640, 48 * 800 / 480, 639 * 1066 / 640, 479 * 800 / 480]])
    )


def test_clip_removes_outside_and_empty_boxes():
    boxes = torch.tensor([[-5.0, -5.0, 200.0, 20.0], [150.0, 10.0, 180.0, 20.0], [3.0, 3.0, 3.0, 9.0]])
    clipped, keep = clip_boxes(boxes, (50, 100))
    assert clipped[0].tolist() == [0.0, 0.0, 99.0, 20.0]
    assert keep.tolist() == [True, False, False]  # outside the image, zero width


def test_random_resize_draws_official_scales():
    torch.manual_seed(0)
    seen = {RandomResize()(Image.new("RGB", (40, 30)), {})[1]["size"][0] for _ in range(60)}
    assert seen == {480, 560, 640, 720, 800}


def test_pipelines_end_in_rgb_unit_tensors():
    image = Image.new("RGB", (64, 48), (255, 128, 0))
    target = {"boxes": torch.tensor([[1.0, 1.0, 10.0, 10.0]]), "size": (48, 64)}
    tensor, _ = build_transforms(train=False)(image, target)
    assert tensor.shape == (3, 800, 1066) and tensor.dtype == torch.float32
    assert tensor[:, 0, 0].tolist() == pytest.approx([1.0, 128 / 255, 0.0])
    tensor, _out = build_transforms(train=True)(image, target)
    assert tensor.shape[1] in (480, 560, 640, 720, 800)
    # the model's input block (conf/model/*.yaml) drives the same pipeline
    cfg = {"min_size_test": 400, "max_size_test": 600, "pixel_mean": [0, 0, 0]}
    assert transforms_from_config(cfg, train=False)(image, target)[0].shape == (3, 400, 533)
