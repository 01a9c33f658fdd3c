"""Inference throughput and model FLOP utilisation (MFU) of GLIP in fp32 and bf16 autocast.

    python benchmarks/gpu_speed.py --model glip_t --batches 1 4 8 --dtypes fp32 bf16 --device cuda

The forward is ``benchmarks/model_speed.py``'s (random seeded weights, identical-size 800 x 1333
images, a 20-token caption, BERT + backbone + head + post-processing under ``torch.no_grad``), timed
per (dtype, batch) after a warm-up; bf16 runs it under ``torch.autocast``. One model serves every
configuration; on CUDA the peak memory is reset per configuration.

MFU = FLOPs per image x images/s / peak. FLOPs are counted once (``torch.utils.flop_counter`` with
the formulas ``adapt.flops`` adds for deformable convolution); they do not depend on
the dtype. Two peaks are given: the datasheet figure of the device where it is known (dense, no
sparsity; a lead, not a measurement) and a dense matrix product measured here and now, the
ceiling that matters in practice.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from model_speed import HEIGHT, WIDTH, model_inputs

from adapt.detector import model_config
from adapt.flops import count_flops
from adapt.markdown import md_table
from adapt.model import GLIPConfig, build_glip
from adapt.runs.results import machine_info

# Datasheet peaks in TFLOP/s (dense), by a substring of torch.cuda.get_device_name. fp32 is the
# plain (non-tensor-core) rate: PyTorch keeps float32 matmuls off TF32 by default.
DATASHEET_TFLOPS = {"H200": {"bf16": 989.0, "fp32": 67.0}, "H100": {"bf16": 989.0, "fp32": 67.0}}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def inputs(cfg: GLIPConfig, batch: int, device: str, hw: tuple[int, int]) -> dict[str, Any]:
    """model_speed.py's inputs."""
    return model_inputs(cfg, batch, device, hw)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_tflops(dtype: torch.dtype, device: str, n: int, reps: int = 10) -> float:
    """Measured dense n x n x n matrix-product rate: the practical ceiling for this dtype."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def measure(model: torch.nn.Module, x: dict[str, Any], dtype: str, device: str, reps: int) -> dict[str, Any]:
    autocast = (
        torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)
        if dtype == "bf16"
        else nullcontext()
    )

    def forward() -> None:
        with autocast:
            model(
                x["images"],
                x["image_sizes"],
                input_ids=x["input_ids"],
                attention_mask=x["attention_mask"],
                label_to_tokens=x["label_to_tokens"],
            )
        _sync(device)

    with torch.no_grad():
        forward()  # warm-up (cuDNN autotuning, allocator)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            forward()
            times.append(time.perf_counter() - start)
    batch = x["images"].shape[0]
    out = {"dtype": dtype, "batch": batch, "s_per_batch": statistics.median(times)}
    out["images_per_s"] = batch / out["s_per_batch"]
    if device.startswith("cuda"):
        out["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = args.device
    hw = tuple(args.image_hw)
    cfg = GLIPConfig.from_dict(model_config(args.model)["arch"])
    model = build_glip(cfg).to(device).eval()
    one = inputs(cfg, 1, device, hw)
    with torch.no_grad():
        flops = count_flops(
            lambda: model(
                one["images"],
                one["image_sizes"],
                input_ids=one["input_ids"],
                attention_mask=one["attention_mask"],
                label_to_tokens=one["label_to_tokens"],
            )
        )
    name = machine_info(device)["device"]
    datasheet = next((v for k, v in DATASHEET_TFLOPS.items() if k in name), {})
    n = 8192 if device.startswith("cuda") else 256
    measured = {d: matmul_tflops(DTYPES[d], device, n) for d in args.dtypes}
    rows = []
    for dtype in args.dtypes:
        for batch in args.batches:
            row = measure(model, inputs(cfg, batch, device, hw), dtype, device, args.reps)
            achieved = flops.total * row["images_per_s"] / 1e12
            row["tflops"] = achieved
            row["mfu_measured"] = achieved / measured[dtype]
            row["mfu_datasheet"] = achieved / datasheet[dtype] if dtype in datasheet else None
            rows.append(row)
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    return {
        "model": args.model,
        "image_hw": list(hw),
        "padded_hw": list(one["images"].shape[-2:]),
        "gflops_per_image": flops.total / 1e9,
        "peak_tflops_datasheet": datasheet,
        "peak_tflops_measured_matmul": measured,
        "machine": machine_info(device),
        "rows": rows,
    }


def markdown(report: dict[str, Any]) -> str:
    m, sheet, meas = report["machine"], report["peak_tflops_datasheet"], report["peak_tflops_measured_matmul"]
    lines = [
        f"{report['model']}, {report['image_hw'][0]} x {report['image_hw'][1]} images "
        f"(padded {report['padded_hw'][0]} x {report['padded_hw'][1]}), "
        f"{report['gflops_per_image']:.3g} GFLOP per image; {m['device']}, torch {m['torch']}.",
        "Peaks (TFLOP/s): measured matmul "
        + ", ".join(f"{k} {v:.3g}" for k, v in meas.items())
        + (
            "; datasheet " + ", ".join(f"{k} {v:g}" for k, v in sheet.items())
            if sheet
            else "; datasheet unknown"
        ),
        "",
    ]
    header = [
        "dtype",
        "batch",
        "s/batch",
        "images/s",
        "TFLOP/s",
        "MFU (matmul)",
        "MFU (datasheet)",
        "peak MiB",
    ]
    table = []
    for r in report["rows"]:
        sheet_mfu = f"{100 * r['mfu_datasheet']:.1f}%" if r["mfu_datasheet"] is not None else "n/a"
        peak = f"{r['peak_memory_mb']:.0f}" if "peak_memory_mb" in r else "n/a"
        table.append(
            [
                r["dtype"],
                r["batch"],
                f"{r['s_per_batch']:.3f}",
                f"{r['images_per_s']:.2f}",
                f"{r['tflops']:.3g}",
                f"{100 * r['mfu_measured']:.1f}%",
                sheet_mfu,
                peak,
            ]
        )
    lines += md_table(header, table, "lrrrrrrr")
    if report["uncounted_ops"]:
        lines.append(
            f"\nOps without a FLOP formula (MFU is a lower bound): {', '.join(report['uncounted_ops'])}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--model", default="glip_t")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4, 8])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    parser.add_argument("--reps", type=int, default=5, help="timed forwards per configuration (median)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--image-hw", nargs=2, type=int, default=[HEIGHT, WIDTH], metavar=("H", "W"))
    parser.add_argument("--json", help="also write the report as JSON here")
    args = parser.parse_args(argv)
    report = run(args)
    print(markdown(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
