"""FLOPs of a callable: torch's FlopCounterMode plus the formulas GLIP needs that torch lacks.

``count_flops(fn)`` runs ``fn`` once under ``torch.utils.flop_counter.FlopCounterMode`` with two
additions passed through its public ``custom_mapping``: torchvision's ``deform_conv2d`` (forward and
backward, counted as the GEMM of its im2col columns; the bilinear sampling is not counted; on the
CPU without autograd adapt's own deformable conv is an ``addmm``, counted by torch) and the
CPU kernel that ``scaled_dot_product_attention`` dispatches to (torch counts only the CUDA ones).
The count is of the real call on real tensors, so it is exact for what it covers: matrix products,
convolutions and attention. Element-wise work is not counted; every figure is a lower bound.

Used by ``benchmarks/odinw`` (FLOPs per training step and per evaluated image) and the speed
benchmarks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class FlopCount:
    """FLOPs of one call, in total and by aten (or torchvision) op."""

    total: float = 0.0
    by_op: dict[str, float] = field(default_factory=dict)


def _deform_conv2d_flop(
    input_shape: Any, weight_shape: Any, *args: Any, out_shape: Any = None, **kw: Any
) -> int:
    """torchvision deform_conv2d as its GEMM (im2col columns x weight)."""
    cout, cin_per_group, kh, kw_ = weight_shape
    n, _, ho, wo = out_shape
    return 2 * n * cout * cin_per_group * kh * kw_ * ho * wo


def _deform_conv2d_backward_flop(
    grad_shape: Any, input_shape: Any, weight_shape: Any, *args: Any, out_shape: Any = None, **kw: Any
) -> int:
    """Backward: the two GEMMs (grad of the columns, grad of the weight); offset/mask grads not counted."""
    cout, cin_per_group, kh, kw_ = weight_shape
    n, _, ho, wo = grad_shape
    return 2 * 2 * n * cout * cin_per_group * kh * kw_ * ho * wo


def _cpu_sdpa_flop(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kw: Any) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward_flop(
    grad: Any, query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kw: Any
) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad, query, key, value)


def extra_formulas() -> dict[Any, Callable[..., int]]:
    """The formulas added to torch's registry (only for ops this torch/torchvision build has)."""
    formulas: dict[Any, Callable[..., int]] = {}
    aten = torch.ops.aten
    for op, formula in (
        ("_scaled_dot_product_flash_attention_for_cpu", _cpu_sdpa_flop),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", _cpu_sdpa_backward_flop),
    ):
        if hasattr(aten, op):
            formulas[getattr(aten, op)] = formula
    try:
        import torchvision  # noqa: F401  (registers torch.ops.torchvision)
    except ImportError:
        return formulas
    ops = torch.ops.torchvision
    if hasattr(ops, "deform_conv2d"):
        formulas[ops.deform_conv2d] = _deform_conv2d_flop
        formulas[ops._deform_conv2d_backward] = _deform_conv2d_backward_flop
    return formulas


def count_flops(fn: Callable[[], Any]) -> FlopCount:
    """Run ``fn()`` once and count its FLOPs (see the module docstring for what is counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping=extra_formulas())
    with counter:
        fn()
    by_op = {str(k): float(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return FlopCount(float(counter.get_total_flops()), by_op)
