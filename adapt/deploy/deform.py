"""The modulated deformable 3x3 convolution as ONNX can run it: ONNX's ``DeformConv``, or a gather + GEMM.

adapt's eager CPU path (``adapt.model.deform_conv``) is an autograd Function around
``F.embedding_bag``, which no exporter translates into something fast. The deployed graph needs
one of two expressions, both computing torchvision's convolution (the official kernel's numbers):

* ``"deformconv"``: ``torchvision.ops.deform_conv2d``, which the dynamo exporter translates into
  ONNX's ``DeformConv`` (opset 19); onnxruntime runs it with its own kernel (CPU and CUDA);
* ``"gather"``: the same sampling as adapt's CPU path (``_bilinear_bags``: four corner rows of the
  channels-last input per (location, tap), bilinear weight x modulation mask) as one ``Gather`` of
  rows, a weighted sum over the four corners and one ``MatMul`` with the kernel: standard ops only,
  so any runtime that reads ONNX runs it.

Which one is faster is the runtime's business; ``benchmarks/deploy_speed.py`` measures both and
the exporter defaults to the faster (see ``DEFAULT``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import Tensor, nn
from torchvision.ops import deform_conv2d

from adapt.model.deform_conv import _bilinear_bags, _kernel
from adapt.model.dyconv import ModulatedDeformConv

IMPLEMENTATIONS = ("deformconv", "gather")
# Measured on GLIP-T at 800 x 1344 on a 2-core CPU (benchmarks/README.md, "Deployed detector").
DEFAULT = "deformconv"


class _ExportDeformConv(nn.Module):
    """Stands in for a ``ModulatedDeformConv`` during export, sharing its parameters (same names)."""

    def __init__(self, original: ModulatedDeformConv, implementation: str) -> None:
        super().__init__()
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"deform_conv must be one of {IMPLEMENTATIONS}, got {implementation!r}")
        self.stride = original.stride
        self.weight = original.weight
        self.bias = original.bias
        self.implementation = implementation

    def forward(self, x: Tensor, offset: Tensor, mask: Tensor) -> Tensor:
        if self.implementation == "deformconv":
            return deform_conv2d(x, offset, self.weight, self.bias, stride=self.stride, padding=1, mask=mask)
        return gather_deform_conv3x3(x, offset, mask, self.weight, self.bias, self.stride)


def gather_deform_conv3x3(
    x: Tensor, offset: Tensor, mask: Tensor, weight: Tensor, bias: Tensor, stride: int
) -> Tensor:
    """DCNv2 3x3 (padding 1) in standard ops: adapt's CPU sampling, its ``embedding_bag`` written
    as a gather of the four corner rows ([4, M, C], corner-major so the sum runs over whole
    contiguous blocks) and their weighted sum in corner order, then one GEMM."""
    b, c, h, w = x.shape
    ho, wo = offset.shape[-2:]
    index, weights = _bilinear_bags(offset, mask, h, w, stride)  # [M, 4] each, M = B*Ho*Wo*9
    table = x.permute(0, 2, 3, 1).reshape(b * h * w, c)
    corners = table[index.t()] * weights.t()[..., None]  # [4, M, C]
    columns = (corners[0] + corners[1] + corners[2] + corners[3]).reshape(-1, 9 * c)
    out = columns @ _kernel(weight).t() + bias
    return out.reshape(b, ho, wo, -1).permute(0, 3, 1, 2)


@contextmanager
def exportable_deform_convs(model: nn.Module, implementation: str = DEFAULT) -> Iterator[None]:
    """Each ``ModulatedDeformConv`` of ``model`` swapped for an exportable one in the block, then back."""
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    for name, module in list(model.named_modules()):
        if isinstance(module, ModulatedDeformConv):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            swapped.append((parent, child, module))
            setattr(parent, child, _ExportDeformConv(module, implementation))
    try:
        yield
    finally:
        for parent, child, module in swapped:
            setattr(parent, child, module)
