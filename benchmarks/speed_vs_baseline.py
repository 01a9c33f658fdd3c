"""GLIP inference speed of this tree against a baseline commit, interleaved, with the outputs compared.

    python benchmarks/speed_vs_baseline.py                          # GLIP-T, 800 x 1333, 3 reps each
    python benchmarks/speed_vs_baseline.py --reps 5 --json speed.json
    python benchmarks/speed_vs_baseline.py --height 320 --width 512 --reps 2   # a quick look
    python benchmarks/speed_vs_baseline.py --variants fp32 bf16 --no-baseline   # bf16 vs fp32 here
    python benchmarks/speed_vs_baseline.py --variants fp32 b4 --no-baseline     # batch 4 vs batch 1

Machines are noisy and differ, so a speed claim is a ratio measured in one run: the baseline commit
(default ``5d30b5e``, about the official GLIP's speed) is checked out into a temporary ``git
worktree`` (removed afterwards) and every timed forward runs in its own fresh subprocess, the
baseline's with that worktree on ``PYTHONPATH``, alternating baseline / current (ABBA order), on
the same seeded weights and input. Printed: each time, the medians and their ratio, the machine.
Speed must not be bought with wrong numbers: the detections and the head's outputs of the two
trees are compared (same boxes, scores and labels within the oracle tests' tolerances).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CAPTION_TOKENS = 20  # a typical ODinW prompt: [CLS] + 18 word pieces + [SEP], padded to 256
LABEL_TO_TOKENS = {1: [1], 2: [3, 4], 3: [6]}
# Agreement thresholds: the oracle tests' (tests/model/test_forward_oracle.py) box and score
# tolerances and unmatched-detection allowance, and the head-output one scaled to GLIP-T's sizes.
BOX_ATOL, SCORE_ATOL, MAX_UNMATCHED, LOGIT_ATOL = 1e-3, 1e-5, 2, 1e-3


# --------------------------------------------------------------------------------------------------
# Worker: one forward of whatever `adapt` is on PYTHONPATH (the baseline's or this tree's).


def worker(args: argparse.Namespace) -> int:
    import torch

    from adapt.detector import model_config
    from adapt.model import GLIPConfig, build_glip
    from adapt.model.preprocess import batch_images

    torch.set_num_threads(args.threads)
    cfg = GLIPConfig.from_dict(model_config(args.model)["arch"])
    model = build_glip(cfg, seed=0).eval()
    # Random weights score every location ~0.01, under the 0.05 threshold: keep all candidates,
    # so that the pre-NMS top-k, NMS and top-100 cut run and there are detections to compare.
    model.postprocessor.score_threshold = 0.0
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, args.height, args.width, generator=g)
    images, sizes = batch_images([image] * args.batch, cfg.input)
    length = cfg.language.max_query_len
    ids = torch.zeros(args.batch, length, dtype=torch.long)
    ids[:, 1 : CAPTION_TOKENS - 1] = torch.randint(1000, 2000, (CAPTION_TOKENS - 2,), generator=g)
    ids[:, 0], ids[:, CAPTION_TOKENS - 1] = 101, 102
    mask = (torch.arange(length) < CAPTION_TOKENS).long().expand(args.batch, -1).contiguous()
    head: dict[str, Any] = {}
    model.head.register_forward_hook(lambda m, a, out: head.update(out=out))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bf16")

    def forward() -> Any:
        with torch.inference_mode(), autocast:
            return model(images, sizes, input_ids=ids, attention_mask=mask, label_to_tokens=LABEL_TO_TOKENS)

    for _ in range(args.warmup):
        forward()
    start, cpu_start = time.perf_counter(), time.process_time()
    detections = forward()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    out = head["out"]
    torch.save(
        {
            "detections": [{k: v.float() for k, v in d.items()} for d in detections[:1]],
            "logits": torch.cat([x[:1].flatten(0, 1) for x in out.dot_product_logits]).float(),
            "bbox_reg": torch.cat([x[:1].flatten(2) for x in out.bbox_reg], dim=2).float(),
        },
        args.out,
    )
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "batch": args.batch}))
    return 0


# --------------------------------------------------------------------------------------------------
# Driver.


def run_one(tree: Path, variant: str, args: argparse.Namespace, out: Path) -> tuple[float, float]:
    """One forward of ``tree`` in a fresh subprocess: (wall, CPU) seconds per image (/ batch).

    CPU time (all threads) is reported next to wall time: on a machine shared with other jobs it
    is the steadier of the two (it does not count time spent waiting for a core)."""
    dtype = "bf16" if variant == "bf16" else "fp32"
    batch = int(variant[1:]) if variant.startswith("b") and variant[1:].isdigit() else 1
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--out", str(out)]
    cmd += ["--model", args.model, "--height", str(args.height), "--width", str(args.width)]
    cmd += ["--threads", str(args.threads), "--dtype", dtype, "--batch", str(batch)]
    cmd += ["--warmup", str(args.warmup)]
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tree)
    if proc.returncode != 0:
        raise RuntimeError(f"forward of {tree} ({variant}) failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return float(result["seconds"]) / batch, float(result["cpu_seconds"]) / batch


def box_iou(a: Any, b: Any) -> Any:
    from torchvision.ops import box_iou as iou

    return iou(a, b)


def compare(ref_path: Path, new_path: Path) -> dict[str, Any]:
    """Detections and head outputs of two runs: differences and whether they agree."""
    import torch

    ref = torch.load(ref_path, weights_only=True)
    new = torch.load(new_path, weights_only=True)
    a, b = ref["detections"][0], new["detections"][0]
    out: dict[str, Any] = {
        "detections": [len(a["scores"]), len(b["scores"])],
        "max_logit_diff": float((ref["logits"] - new["logits"]).abs().max()),
        "max_bbox_reg_diff": float((ref["bbox_reg"] - new["bbox_reg"]).abs().max()),
    }
    # Greedy one-to-one matching, best reference score first: same label, highest IoU > 0.5.
    iou = box_iou(a["boxes"], b["boxes"])
    iou[a["labels"][:, None] != b["labels"][None, :]] = 0
    taken: set[int] = set()
    box_diffs, score_diffs, exact = [], [], 0
    for i in a["scores"].argsort(descending=True).tolist():
        row = iou[i].clone()
        row[list(taken)] = 0
        if len(row) == 0 or float(row.max()) <= 0.5:
            continue
        j = int(row.argmax())
        taken.add(j)
        box_diffs.append(float((a["boxes"][i] - b["boxes"][j]).abs().max()))
        score_diffs.append(float((a["scores"][i] - b["scores"][j]).abs()))
        exact += box_diffs[-1] <= BOX_ATOL and score_diffs[-1] <= SCORE_ATOL
    out["matched_iou_0.5"] = len(box_diffs)
    out["within_tolerance"] = exact
    out["max_box_diff"] = max(box_diffs, default=0.0)
    out["median_box_diff"] = statistics.median(box_diffs) if box_diffs else 0.0
    out["max_score_diff"] = max(score_diffs, default=0.0)
    out["median_score_diff"] = statistics.median(score_diffs) if score_diffs else 0.0
    n = max(out["detections"])
    out["agree"] = exact >= n - MAX_UNMATCHED and out["max_logit_diff"] <= LOGIT_ATOL
    return out


def machine_line(threads: int) -> dict[str, Any]:
    import torch

    from adapt.runs.results import machine_info

    torch.set_num_threads(threads)
    return machine_info("cpu")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="5d30b5e", help="commit to compare against")
    parser.add_argument("--no-baseline", action="store_true", help="only compare --variants of this tree")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["fp32"],
        help="fp32, bf16 (CPU autocast) or bN (fp32, batch N); the first is the reference",
    )
    parser.add_argument("--reps", type=int, default=3, help="timed forwards per side (median)")
    parser.add_argument("--model", default="glip_t")
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=0, help="untimed forwards in each subprocess first")
    parser.add_argument("--json", help="write the times, medians, ratio and comparison here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)

    machine = machine_line(args.threads)
    print(
        f"# {machine['cpu']}, {args.threads} threads, torch {machine['torch']}, "
        f"torchvision {machine.get('torchvision')}; {args.model} {args.height}x{args.width}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="speed_vs_baseline_") as tmp:
        tmp_path = Path(tmp)
        sides: list[tuple[str, Path, str]] = []
        baseline_tree = tmp_path / "baseline"
        if not args.no_baseline:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(baseline_tree), args.baseline],
                check=True,
                capture_output=True,
            )
            sides.append((f"baseline {args.baseline}", baseline_tree, args.variants[0]))
        sides += [(f"current {v}", ROOT, v) for v in args.variants]
        try:
            times: dict[str, list[float]] = {name: [] for name, _, _ in sides}
            cpu: dict[str, list[float]] = {name: [] for name, _, _ in sides}
            for rep in range(args.reps):
                order = sides if rep % 2 == 0 else sides[::-1]  # ABBA: drift hits both sides alike
                for name, tree, variant in order:
                    seconds, cpu_s = run_one(tree, variant, args, tmp_path / f"{name.replace(' ', '_')}.pt")
                    times[name].append(seconds)
                    cpu[name].append(cpu_s)
                    print(
                        f"  rep {rep + 1}  {name:<22} {seconds:8.2f} s/image wall  {cpu_s:8.2f} s CPU",
                        flush=True,
                    )
            medians = {name: statistics.median(t) for name, t in times.items()}
            cpu_medians = {name: statistics.median(t) for name, t in cpu.items()}
            ref_name = sides[0][0]
            result: dict[str, Any] = {
                "machine": machine,
                "args": {k: v for k, v in vars(args).items() if k not in ("worker", "out", "dtype", "batch")},
                "date": time.strftime("%Y-%m-%d"),
                "times": times,
                "medians": medians,
                "cpu_times": cpu,
                "cpu_medians": cpu_medians,
            }
            print("# medians (s per image) and speed ratios (throughput) against " + ref_name)
            result["speedup"] = {}
            result["comparison"] = {}
            for name, _, _variant in sides:
                ratio = medians[ref_name] / medians[name]
                cpu_ratio = cpu_medians[ref_name] / cpu_medians[name]
                result["speedup"][name] = ratio
                result.setdefault("cpu_speedup", {})[name] = cpu_ratio
                print(
                    f"  {name:<22} {medians[name]:8.2f} s   {ratio:5.2f}x wall   "
                    f"{cpu_medians[name]:8.2f} s CPU   {cpu_ratio:5.2f}x CPU",
                    flush=True,
                )
                if name != ref_name:
                    cmp = compare(
                        tmp_path / f"{ref_name.replace(' ', '_')}.pt",
                        tmp_path / f"{name.replace(' ', '_')}.pt",
                    )
                    result["comparison"][name] = cmp
                    print(f"    vs {ref_name}: {json.dumps(cmp)}", flush=True)
        finally:
            if not args.no_baseline:
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline_tree)],
                    capture_output=True,
                )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
