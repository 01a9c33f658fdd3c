"""Image normalisation and batching, exactly as the official test transform + ``to_image_list``.

The resize rule lives in :mod:`adapt.data.transforms`; this module takes images that are already
resized and turns them into the network input. Batching matters numerically: nothing in GLIP masks
the padded area (Swin attention, GroupNorm statistics, the DyReLU/DyConv global pools and the
image-to-text fusion all see it), so a per-image result depends on the padded batch size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from adapt.model.config import InputConfig


def normalize(image: Tensor, cfg: InputConfig | None = None) -> Tensor:
    """RGB in [0, 1] -> the official ``Normalize(format='bgr255')`` output.

    Official quirk (INPUT.TO_BGR255): channels are reversed to BGR and scaled to 0..255 *before*
    the mean/std (given in BGR order) are applied, because the weights were trained that way.
    """
    cfg = cfg or InputConfig()
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected an RGB image tensor [3, h, w], got shape {tuple(image.shape)}")
    mean = torch.tensor(cfg.pixel_mean, dtype=image.dtype, device=image.device)[:, None, None]
    std = torch.tensor(cfg.pixel_std, dtype=image.dtype, device=image.device)[:, None, None]
    bgr255 = image.flip(0) * 255
    return (bgr255 - mean) / std


def padded_size(sizes: Sequence[tuple[int, int]], size_divisibility: int) -> tuple[int, int]:
    """Batch maximum of (h, w), rounded up to a multiple of ``size_divisibility``."""
    h = max(s[0] for s in sizes)
    w = max(s[1] for s in sizes)
    if size_divisibility > 0:
        h = int(math.ceil(h / size_divisibility) * size_divisibility)
        w = int(math.ceil(w / size_divisibility) * size_divisibility)
    return h, w


def batch_images(
    images: Sequence[Tensor], cfg: InputConfig | None = None
) -> tuple[Tensor, list[tuple[int, int]]]:
    """Normalise RGB [0, 1] images and zero-pad them into one batch tensor.

    Each image goes to the top-left corner; the padding is 0 *after* normalisation (the mean
    colour), as in the official ``to_image_list``. Returns the batch [B, 3, H, W] and the
    un-padded (h, w) of every image, which anchors' clipping and post-processing need.
    """
    cfg = cfg or InputConfig()
    if len(images) == 0:
        raise ValueError("batch_images needs at least one image")
    sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    h, w = padded_size(sizes, cfg.size_divisibility)
    first = images[0]
    batch = first.new_zeros((len(images), 3, h, w))
    for i, im in enumerate(images):
        batch[i, :, : sizes[i][0], : sizes[i][1]] = normalize(im, cfg)
    return batch, sizes
