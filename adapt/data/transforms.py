"""Image and box transforms of the official GLIP data pipeline.

Boxes are xyxy in the maskrcnn_benchmark "+1" convention (a box covering pixel columns 10..19 has
x1 = 10, x2 = 19, width x2 - x1 + 1), which is what the model's anchors, box coder and NMS assume.
Normalisation (BGR, x255, mean/std) and padding to a multiple of 32 belong to the model
(`adapt.model.preprocess`), so these transforms stop at an RGB float tensor in [0, 1].

Every transform is `(image, target) -> (image, target)` with `target["boxes"]` a float tensor
[n, 4] in the current image's pixels and `target["size"]` its current (h, w).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torchvision.transforms.functional as F
from PIL import Image

Target = dict[str, Any]
Transform = Callable[[Any, Target], tuple[Any, Target]]

# Official INPUT / AUGMENT values (spec 1.1); the task configs carry them, these are the defaults.
TRAIN_MIN_SIZES = (480, 560, 640, 720, 800)
TEST_MIN_SIZE = 800
MAX_SIZE = 1333


def resize_shape(h: int, w: int, min_size: int, max_size: int | None) -> tuple[int, int]:
    """Output (h, w) of the official resize: short side to `min_size`, long side capped at `max_size`.

    The long side is truncated, not rounded (official `get_size`), so sizes match the oracle to the
    pixel and a box rescaled here lands where the official model saw it.
    """
    size = min_size
    short, long = (w, h) if w <= h else (h, w)
    if max_size is not None and long / short * size > max_size:
        size = round(max_size * short / long)  # official int(round(...)); round() is already int
    if short == size:
        return h, w
    if w < h:
        return int(size * h / w), size
    return size, int(size * w / h)


def resize_boxes(boxes: torch.Tensor, old_hw: tuple[int, int], new_hw: tuple[int, int]) -> torch.Tensor:
    """Scale xyxy boxes by the per-axis size ratio (official BoxList.resize: plain products, no +1)."""
    ratio_h = new_hw[0] / old_hw[0]
    ratio_w = new_hw[1] / old_hw[1]
    return boxes * torch.tensor([ratio_w, ratio_h, ratio_w, ratio_h], dtype=boxes.dtype)


def clip_boxes(boxes: torch.Tensor, hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip to the last pixel (W - 1, H - 1) and return (boxes, keep) with keep = non-empty boxes.

    Mirrors `clip_to_image(remove_empty=True)`: a box is empty unless x2 > x1 and y2 > y1, which
    also removes boxes lying entirely outside the image.
    """
    h, w = hw
    boxes = boxes.clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(min=0, max=w - 1)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(min=0, max=h - 1)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes, keep


def _resize(image: Image.Image, target: Target, min_size: int, max_size: int | None) -> tuple[Any, Target]:
    old_hw = (image.height, image.width)
    new_hw = resize_shape(image.height, image.width, min_size, max_size)
    image = F.resize(image, list(new_hw), interpolation=F.InterpolationMode.BILINEAR)
    target = dict(target, size=new_hw)
    if "boxes" in target:
        target["boxes"] = resize_boxes(target["boxes"], old_hw, new_hw)
    return image, target


class Resize:
    """Test-time resize (official MIN_SIZE_TEST 800, MAX_SIZE_TEST 1333)."""

    def __init__(self, min_size: int = TEST_MIN_SIZE, max_size: int | None = MAX_SIZE) -> None:
        self.min_size = min_size
        self.max_size = max_size

    def __call__(self, image: Image.Image, target: Target) -> tuple[Any, Target]:
        return _resize(image, target, self.min_size, self.max_size)


class RandomResize:
    """Train-time multi-scale resize: the short side is drawn per image from `min_sizes`.

    The official ODinW yamls say MIN_SIZE_TRAIN 800, but the pretrain yaml's non-empty
    MULT_MIN_SIZE_TRAIN wins, so fine-tuning is multi-scale (spec 1.1).
    """

    def __init__(self, min_sizes: Sequence[int] = TRAIN_MIN_SIZES, max_size: int | None = MAX_SIZE) -> None:
        self.min_sizes = tuple(min_sizes)
        self.max_size = max_size

    def __call__(self, image: Image.Image, target: Target) -> tuple[Any, Target]:
        size = self.min_sizes[int(torch.randint(len(self.min_sizes), ()).item())]
        return _resize(image, target, size, self.max_size)


class RandomHorizontalFlip:
    """Flip with probability p; boxes follow the +1 convention: x1' = W - x2 - 1, x2' = W - x1 - 1."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image: Image.Image, target: Target) -> tuple[Any, Target]:
        if self.p <= 0 or torch.rand(()).item() >= self.p:
            return image, target
        image = F.hflip(image)
        # hflip identifies the view (adapt.train.feature_cache keys frozen features by it).
        target = dict(target, hflip=True)
        if "boxes" in target:
            boxes = target["boxes"]
            width = image.width if isinstance(image, Image.Image) else image.shape[-1]
            target["boxes"] = torch.stack(
                [width - boxes[:, 2] - 1, boxes[:, 1], width - boxes[:, 0] - 1, boxes[:, 3]], dim=1
            )
        return image, target


class ToTensor:
    """PIL RGB -> float tensor [3, h, w] in [0, 1] (official ToTensor, before the model's Normalize)."""

    def __call__(self, image: Image.Image, target: Target) -> tuple[torch.Tensor, Target]:
        return F.to_tensor(image), target


class Compose:
    """Apply transforms in order; kept tiny so the pipeline reads as a list."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Any, target: Target) -> tuple[Any, Target]:
        for t in self.transforms:
            image, target = t(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


def build_transforms(
    train: bool,
    min_size_train: Sequence[int] | int = TRAIN_MIN_SIZES,
    max_size_train: int | None = MAX_SIZE,
    min_size_test: int = TEST_MIN_SIZE,
    max_size_test: int | None = MAX_SIZE,
    flip_prob: float = 0.5,
) -> Compose:
    """The official pipeline: resize (multi-scale when training), flip (training only), to tensor.

    Keyword names are those of `model.arch.input` in `conf/model/*.yaml`, so a job can pass
    `transforms_from_config(cfg.model.arch.input, train)`.
    """
    if train:
        sizes = (min_size_train,) if isinstance(min_size_train, int) else tuple(min_size_train)
        return Compose([RandomResize(sizes, max_size_train), RandomHorizontalFlip(flip_prob), ToTensor()])
    return Compose([Resize(min_size_test, max_size_test), ToTensor()])


def transforms_from_config(input_cfg: Mapping[str, Any] | None, train: bool) -> Compose:
    """`build_transforms` from a config's input block; other keys there (pixel_mean...) are the model's."""
    keys = ("min_size_train", "max_size_train", "min_size_test", "max_size_test", "flip_prob")
    given = {k: input_cfg[k] for k in keys if input_cfg is not None and k in input_cfg}
    return build_transforms(train, **given)
