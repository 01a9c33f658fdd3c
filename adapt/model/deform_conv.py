"""Modulated deformable 3x3 convolution (DCNv2): torchvision's kernel, or sampling + one GEMM.

``torchvision.ops.deform_conv2d`` is the reference, and what runs on devices other than the CPU.
Its CPU kernel builds the im2col columns in one scalar, single-threaded loop that recomputes every
bilinear weight for each of the 256 channels (and its backward does it twice more); measured on
GLIP-T at 800 x 1333 (2 threads) that loop was 35 % of the whole inference. On the CPU this module
computes the same convolution in two library calls instead:

1. the bilinear sampling as ``F.embedding_bag`` (``mode="sum"``, ``per_sample_weights``): every
   (output location, tap) is a bag of its four corner rows of the channels-last input, weighted by
   the bilinear weight times the modulation mask; a multi-threaded, vectorised gather-and-sum;
2. the convolution as one ``addmm`` of the [locations, 9 * C] columns with the weight.

Under autograd (``_SampledDeformConv``) only the inputs are kept for backward, as torchvision does:
the columns are 9x the input, so they are recomputed in backward, where ``embedding_bag``'s own
backward and the bilinear weights' element-wise derivatives give the input, offset and mask
gradients, and two GEMMs the weight gradient and the columns' (only those that are needed: prompt
tuning needs no weight gradient, torchvision computes it always).

The corner weights and bounds follow torchvision's CPU kernel (what the official CUDA kernel
computes): a sample outside (-1, H) x (-1, W) is 0, a corner outside the map contributes 0, the
coordinate is ``float(int grid position) + offset``. Only the order of the floating-point
additions differs (the weight x mask product, the GEMM's reduction order), so results agree with
torchvision to about 1e-6 relative, well inside the oracle tests' tolerances; gradients likewise.
Hand-written because
neither torch nor torchvision offers a fast CPU path for this op; ``F.grid_sample`` would, but its
[-1, 1] coordinate normalisation costs ~2e-5 absolute error, beyond the head tolerance.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import deform_conv2d

# 3x3 taps in torchvision's (and the official kernel's) order: row-major, centred on the location.
_TAP_DY = (-1, -1, -1, 0, 0, 0, 1, 1, 1)
_TAP_DX = (-1, 0, 1, -1, 0, 1, -1, 0, 1)


def modulated_deform_conv3x3(
    x: Tensor, offset: Tensor, mask: Tensor, weight: Tensor, bias: Tensor, stride: int = 1
) -> Tensor:
    """3x3 DCNv2 with padding 1: x [B,C,H,W], offset [B,18,Ho,Wo] (dy, dx per tap), mask [B,9,Ho,Wo].

    The output may be channels-last in memory (the sampling path's natural layout)."""
    if x.device.type != "cpu":
        return deform_conv2d(x, offset, weight, bias, stride=stride, padding=1, mask=mask)
    return _SampledDeformConv.apply(x, offset, mask, weight, bias, stride)


def _columns(x: Tensor, offset: Tensor, mask: Tensor, stride: int) -> Tensor:
    """The deformable im2col: [B*Ho*Wo, 9*C], columns ordered (tap, channel)."""
    b, c, h, w = x.shape
    index, weights = _bilinear_bags(offset, mask, h, w, stride)
    table = x.permute(0, 2, 3, 1).reshape(b * h * w, c)  # a view when x is channels-last
    columns = F.embedding_bag(index, table, per_sample_weights=weights, mode="sum")  # [B*Ho*Wo*9, C]
    return columns.view(-1, 9 * c)


def _kernel(weight: Tensor) -> Tensor:
    """[Cout, C, 3, 3] -> [Cout, 9*C] in the columns' (tap, channel) order."""
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)


def _sampled_gemm(
    x: Tensor, offset: Tensor, mask: Tensor, weight: Tensor, bias: Tensor, stride: int
) -> Tensor:
    b, ho, wo = x.shape[0], *offset.shape[-2:]
    out = torch.addmm(bias, _columns(x, offset, mask, stride), _kernel(weight).t())
    return out.view(b, ho, wo, -1).permute(0, 3, 1, 2)


class _SampledDeformConv(torch.autograd.Function):
    """The sampled GEMM under autograd, keeping only the inputs for backward (as torchvision does):
    the columns (9x the input) are recomputed there, with autograd through the sampling
    (``embedding_bag``'s own backward for the input rows and the per-sample weights, and the
    bilinear weights' element-wise derivative for offsets and mask)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        offset: Tensor,
        mask: Tensor,
        weight: Tensor,
        bias: Tensor,
        stride: int,
    ) -> Tensor:
        ctx.save_for_backward(x, offset, mask, weight)
        ctx.stride = stride
        return _sampled_gemm(x, offset, mask, weight, bias, stride)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple:
        x, offset, mask, weight = ctx.saved_tensors
        need_weight, need_bias = ctx.needs_input_grad[3:5]
        inputs = [
            t.detach().requires_grad_(need)
            for t, need in zip((x, offset, mask), ctx.needs_input_grad[:3], strict=True)
        ]
        with torch.enable_grad():
            columns = _columns(inputs[0], inputs[1], inputs[2], ctx.stride)
        grad = grad_out.permute(0, 2, 3, 1).reshape(-1, weight.shape[0])  # [B*Ho*Wo, Cout]
        grad_weight = grad_bias = None
        if need_weight:
            grad_weight = (grad.t() @ columns.detach()).view(weight.shape[0], 3, 3, -1).permute(0, 3, 1, 2)
        if need_bias:
            grad_bias = grad.sum(dim=0)
        grads: list[Tensor | None] = [None, None, None]
        wanted = [i for i, t in enumerate(inputs) if t.requires_grad]
        if wanted:
            found = torch.autograd.grad(columns, [inputs[i] for i in wanted], grad @ _kernel(weight))
            for i, g in zip(wanted, found, strict=True):
                grads[i] = g
        return (*grads, grad_weight, grad_bias, None)


def _bilinear_bags(
    offset: Tensor, mask: Tensor, height: int, width: int, stride: int
) -> tuple[Tensor, Tensor]:
    """Per (image, output row, output column, tap): the 4 corner rows of the flattened input and
    their weights (bilinear x mask; 0 where torchvision reads 0). Both [B*Ho*Wo*9, 4]."""
    b, _, ho, wo = offset.shape
    dev, dtype = offset.device, offset.dtype
    delta = offset.view(b, 9, 2, ho, wo).permute(0, 3, 4, 1, 2)  # [B, Ho, Wo, 9, (dy, dx)]
    grid_y = torch.arange(ho, device=dev)[:, None, None] * stride + torch.tensor(_TAP_DY, device=dev)
    grid_x = torch.arange(wo, device=dev)[None, :, None] * stride + torch.tensor(_TAP_DX, device=dev)
    y = grid_y.to(dtype) + delta[..., 0]  # [B, Ho, Wo, 9]
    x = grid_x.to(dtype) + delta[..., 1]
    # torchvision reads 0 outside (-1, H) x (-1, W). On the -1 lines themselves the value is 0
    # either way (the only valid corner has weight 0) but the offset gradient is not: counting
    # them inside gives torchvision's backward (the derivative from inside the map).
    inside = (y >= -1) & (x >= -1) & (y < height) & (x < width)
    y0, x0 = y.floor(), x.floor()
    ly, lx = y - y0, x - x0
    hy, hx = 1 - ly, 1 - lx
    y0, x0 = y0.long(), x0.long()
    y1, x1 = y0 + 1, x0 + 1
    weights = torch.stack([hy * hx, hy * lx, ly * hx, ly * lx], dim=-1) * mask.permute(0, 2, 3, 1)[..., None]
    top, bottom = y0 >= 0, y1 <= height - 1
    left, right = x0 >= 0, x1 <= width - 1
    # Inside the sampling window every corner is at most one pixel off the map; outside it the
    # corners can be anywhere, so they are all invalid.
    valid = torch.stack([top & left, top & right, bottom & left, bottom & right], dim=-1) & inside[..., None]
    first_row = (torch.arange(b, device=dev) * (height * width)).view(b, 1, 1, 1, 1)
    index = torch.stack([y0 * width + x0, y0 * width + x1, y1 * width + x0, y1 * width + x1], dim=-1)
    # A corner outside the map reads row 0 with weight 0 (adds an exact 0, like torchvision).
    index = torch.where(valid, index + first_row, 0)
    weights = torch.where(valid, weights, 0.0)
    return index.view(-1, 4), weights.view(-1, 4)
