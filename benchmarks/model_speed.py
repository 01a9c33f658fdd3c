"""Forward time and peak memory of GLIP inference at the official test size (800 x 1333).

    python benchmarks/model_speed.py                       # glip_t and glip_mini, batch 1 and 4
    python benchmarks/model_speed.py --models glip_t --batches 1 --reps 3 --device cuda

Each (model, batch) runs in its own process, so that the CPU peak RSS (``resource.getrusage``,
which only ever grows) belongs to that configuration alone; on CUDA the peak is
``torch.cuda.max_memory_allocated``. Weights are random (seeded): speed does not depend on them.
Timed: one eval forward under ``torch.no_grad`` (BERT + backbone + head + post-processing) for a
batch of identical-size 800 x 1333 images (padded to 800 x 1344), after one warm-up forward.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import torch

from adapt.detector import model_config
from adapt.model import GLIPConfig, build_glip
from adapt.model.preprocess import batch_images
from adapt.runs.results import machine_info

HEIGHT, WIDTH = 800, 1333
CLASSES_CAPTION_TOKENS = 20  # a typical ODinW prompt: [CLS] + ~18 word pieces + [SEP]


def model_inputs(
    cfg: GLIPConfig, batch: int, device: str, hw: tuple[int, int] = (HEIGHT, WIDTH), targets: bool = False
) -> dict[str, Any]:
    """The speed benchmarks' one input: seeded random images of one size and a [CLS] + 18 pieces +
    [SEP] caption padded to 256 (GLIP always runs the full length), plus two boxes per image for a
    training step when ``targets``."""
    g = torch.Generator().manual_seed(0)
    images, sizes = batch_images([torch.rand(3, *hw, generator=g) for _ in range(batch)], cfg.input)
    length = cfg.language.max_query_len
    ids = torch.zeros(batch, length, dtype=torch.long)
    ids[:, 1 : CLASSES_CAPTION_TOKENS - 1] = torch.randint(
        1000, 2000, (CLASSES_CAPTION_TOKENS - 2,), generator=g
    )
    ids[:, 0], ids[:, CLASSES_CAPTION_TOKENS - 1] = 101, 102
    mask = (torch.arange(length) < CLASSES_CAPTION_TOKENS).long().expand(batch, -1).contiguous()
    out: dict[str, Any] = {
        "images": images.to(device),
        "image_sizes": sizes,
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "label_to_tokens": {1: [1], 2: [3, 4], 3: [6]},
    }
    if targets:
        out["targets"] = [
            {
                "boxes": torch.tensor(
                    [[0.1 * w, 0.1 * h, 0.5 * w, 0.6 * h], [0.4 * w, 0.3 * h, 0.9 * w, 0.9 * h]]
                ).to(device),
                "labels": torch.tensor([1, 2], device=device),
            }
            for h, w in sizes
        ]
    return out


def measure(model_name: str, batch: int, reps: int, device: str) -> dict:
    """Time ``reps`` forwards (after a warm-up) of one configuration in this process."""
    cfg = GLIPConfig.from_dict(model_config(model_name)["arch"])
    model = build_glip(cfg).to(device).eval()
    x = model_inputs(cfg, batch, device)
    images = x["images"]

    def forward() -> None:
        model(
            images,
            x["image_sizes"],
            input_ids=x["input_ids"],
            attention_mask=x["attention_mask"],
            label_to_tokens=x["label_to_tokens"],
        )
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    times = []
    with torch.no_grad():
        forward()
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        for _ in range(reps):
            start = time.perf_counter()
            forward()
            times.append(time.perf_counter() - start)
    if device.startswith("cuda"):
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return {
        "model": model_name,
        "batch": batch,
        "padded_hw": list(images.shape[-2:]),
        "reps": reps,
        "seconds_per_batch": statistics.median(times),
        "seconds_per_image": statistics.median(times) / batch,
        "peak_memory_mb": peak_mb,
        "memory_kind": "cuda max_memory_allocated" if device.startswith("cuda") else "CPU peak RSS",
    }


def machine(device: str) -> str:
    m = machine_info(device)
    where = m["device"] if device.startswith("cuda") else m["cpu"]
    return f"{where}, {m['cpu_threads']} threads, torch {m['torch']}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["glip_t", "glip_mini"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--reps", type=int, default=2, help="timed forwards per configuration (median)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.reps, args.device)))
        return 0

    print(f"# {machine(args.device)}")
    print(f"# {'model':<10} {'batch':>5} {'s/batch':>9} {'s/image':>9} {'peak MiB':>9}  memory")
    for name in args.models:
        for batch in args.batches:
            cmd = [sys.executable, __file__, "--one", name, str(batch), "--reps", str(args.reps)]
            cmd += ["--device", args.device]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"  {name:<10} {batch:>5} failed:\n{proc.stderr[-2000:]}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            print(
                f"  {r['model']:<10} {r['batch']:>5} {r['seconds_per_batch']:>9.2f} "
                f"{r['seconds_per_image']:>9.2f} {r['peak_memory_mb']:>9.0f}  {r['memory_kind']}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
