"""The Trainer's numeric precision for the machine a job lands on.

``trainer.precision: auto`` (the default) is mixed precision on CUDA, as the paper trains, and full
precision on the CPU. bf16 on a CPU without a bf16 matrix unit (AVX-512 BF16 or AMX) is emulated and
far slower than fp32 (GLIP-T inference measured 25x slower, benchmarks/README.md): allowed, with a
warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch


def resolve_precision(trainer_cfg: Mapping[str, Any]) -> str:
    """``trainer.precision`` with ``auto`` decided for this machine."""
    precision = str(trainer_cfg.get("precision", "auto"))
    on_gpu = trainer_cfg.get("accelerator", "auto") in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    if precision == "auto":
        return "16-mixed" if on_gpu else "32-true"
    if precision.startswith("bf16") and not on_gpu and not cpu_has_bf16_matmul():
        warnings.warn(
            f"trainer.precision={precision} on a CPU without AVX-512 BF16 or AMX: bf16 is emulated "
            "here and much slower than 32-true (see benchmarks/README.md)",
            stacklevel=2,
        )
    return precision


def cpu_has_bf16_matmul() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (torch's own capability checks)."""
    checks = (
        getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    )
    return any(check() for check in checks if check is not None)
