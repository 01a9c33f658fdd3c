"""DyConv: the vision block of the DyHead tower (official ``DyConv`` in ``vldyhead.py``).

For every FPN level l, three modulated deformable 3x3 convs read level l (stride 1), the finer
level l-1 (stride 2) and the coarser level l+1 (stride 1, then upsampled); all three use the
offsets and mask predicted from level l. A scale attention weighs the terms, their mean goes
through DyReLU-B.

Numerics quirk reproduced on purpose (needed to match pretrained weights): the official CUDA
kernel indexes offset and mask by the conv's *output* size without checking shapes, so the
coarser-level branch (output H' x W' < H x W) reads the first 18*H'*W' (mask: 9*H'*W') values of
each image's channel-major level-l block as an [18, H', W'] tensor. ``_reinterpret`` passes that
slice to ``torchvision.ops.deform_conv2d``, which would otherwise reject the shape.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adapt.model.deform_conv import modulated_deform_conv3x3


def h_sigmoid(x: Tensor) -> Tensor:
    """Official ``h_sigmoid`` (h_max = 1): ReLU6(x + 3) / 6."""
    return F.relu6(x + 3.0) / 6.0


class HSigmoid(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return h_sigmoid(x)


class ModulatedDeformConv(nn.Module):
    """DCNv2 3x3 conv with bias (official ``ModulatedDeformConv``, deformable_groups 1)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.stride = stride
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        # Official DyConv init: normal(0, 0.01) weights, zero bias.
        nn.init.normal_(self.weight, std=0.01)

    def forward(self, x: Tensor, offset: Tensor, mask: Tensor) -> Tensor:
        # Official: the deformable conv runs in fp32 even under AMP.
        with torch.autocast(device_type=x.device.type, enabled=False):
            return modulated_deform_conv3x3(
                x.float(), offset.float(), mask.float(), self.weight.float(), self.bias.float(), self.stride
            )


class Conv3x3Norm(nn.Module):
    """Deformable conv + GroupNorm (official ``Conv3x3Norm``; ``bn`` is the official name)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, groups: int) -> None:
        super().__init__()
        self.conv = ModulatedDeformConv(in_channels, out_channels, stride)
        self.bn = nn.GroupNorm(groups, out_channels)

    def forward(self, x: Tensor, offset: Tensor, mask: Tensor) -> Tensor:
        return self.bn(self.conv(x, offset, mask))


class DyReLU(nn.Module):
    """DyReLU-B (reduction 4, two linear pieces with bias, no spatial attention).

    y = hsig(fc(GAP(x))) split into (a1, b1, a2, b2); a1 = (a1 - 0.5)*2 + 1, a2 = (a2 - 0.5)*2,
    b = b - 0.5; out = max(x*a1 + b1, x*a2 + b2).
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.channels = channels
        squeeze = channels // reduction
        self.fc = nn.Sequential(
            nn.Linear(channels, squeeze), nn.ReLU(inplace=True), nn.Linear(squeeze, 4 * channels), HSigmoid()
        )

    def forward(self, x: Tensor) -> Tensor:
        b, c = x.shape[:2]
        y = self.fc(F.adaptive_avg_pool2d(x, 1).view(b, c)).view(b, 4 * c, 1, 1)
        a1, b1, a2, b2 = torch.split(y, self.channels, dim=1)
        a1 = (a1 - 0.5) * 2.0 + 1.0
        a2 = (a2 - 0.5) * 2.0 + 0.0
        b1 = b1 - 0.5 + 0.0
        b2 = b2 - 0.5 + 0.0
        return torch.max(x * a1 + b1, x * a2 + b2)


def _reinterpret(t: Tensor, height: int, width: int) -> Tensor:
    """Per image, the first C*h*w values of a [C, H, W] block viewed as [C, h, w] (the kernel's
    pointer arithmetic; identity when the sizes agree)."""
    b, c = t.shape[:2]
    if t.shape[-2:] == (height, width):
        return t
    return t.reshape(b, -1)[:, : c * height * width].reshape(b, c, height, width)


class DyConv(nn.Module):
    """Tower step on the visual stream: 5 maps in, 5 maps out (official module names)."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        # DyConv[0]: coarser level l+1, DyConv[1]: level l, DyConv[2]: finer level l-1 (stride 2).
        self.DyConv = nn.ModuleList(
            [
                Conv3x3Norm(channels, channels, 1, groups),
                Conv3x3Norm(channels, channels, 1, groups),
                Conv3x3Norm(channels, channels, 2, groups),
            ]
        )
        attn_conv = nn.Conv2d(channels, 1, 1)
        self.AttnConv = nn.Sequential(nn.AdaptiveAvgPool2d(1), attn_conv, nn.ReLU(inplace=True))
        self.relu = DyReLU(channels)
        # 18 offsets (dy, dx interleaved per tap) + 9 mask logits; zero init = a plain conv at start.
        self.offset = nn.Conv2d(channels, 27, 3, padding=1)
        nn.init.normal_(attn_conv.weight, std=0.01)
        nn.init.zeros_(attn_conv.bias)  # type: ignore[arg-type]  # built with a bias
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)  # type: ignore[arg-type]

    def forward(self, visual: list[Tensor]) -> list[Tensor]:
        out = []
        for level, feature in enumerate(visual):
            height, width = feature.shape[-2:]
            offset_mask = self.offset(feature)
            offset = offset_mask[:, :18].contiguous()
            mask = offset_mask[:, 18:].sigmoid()
            # Term order as in the official code: same level, finer, coarser (the mean's rounding).
            terms = [self.DyConv[1](feature, offset, mask)]
            if level > 0:
                terms.append(self.DyConv[2](visual[level - 1], offset, mask))
            if level < len(visual) - 1:
                coarser = visual[level + 1]
                h, w = coarser.shape[-2:]
                # Pointer-reinterpretation quirk (module docstring).
                term = self.DyConv[0](coarser, _reinterpret(offset, h, w), _reinterpret(mask, h, w))
                # F.upsample_bilinear in the official code: bilinear with align_corners=True.
                terms.append(F.interpolate(term, size=(height, width), mode="bilinear", align_corners=True))
            # Official: mean(stack(terms) * stack(weights), dim 0), summed term by term here (the
            # same additions; stacking the channels-last maps cost a relayout per level).
            weighted = [term * h_sigmoid(self.AttnConv(term)) for term in terms]
            out.append(self.relu(sum(weighted[1:], weighted[0]) / len(weighted)))
        return out
