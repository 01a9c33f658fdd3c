"""CPU throughput of the deployed ONNX detector (onnxruntime) against adapt's eager PyTorch, interleaved.

    python benchmarks/deploy_speed.py                         # GLIP-T, 800 x 1344, 3 reps each
    python benchmarks/deploy_speed.py --reps 5 --int8 --json deploy_speed.json
    python benchmarks/deploy_speed.py --height 320 --width 512 --reps 2 --model glip_mini  # a quick look

Both sides do the whole job for one image file: read, resize, normalise, pad, the network,
post-processing, boxes in original pixels. adapt's side is ``Detector.predict`` (what
``adapt.predict`` runs) with a class list encoded once beforehand (the deployed file has its text
baked in; BERT is not timed on either side). The ONNX sides are ``adapt.deploy.runtime`` with
onnxruntime's graph optimisations on (``ORT_ENABLE_ALL``), one per deformable-convolution form
(``DeformConv`` and gather + GEMM; the gather form needs ~9 GB at this size), optionally the first
form's file after onnxruntime's dynamic int8 quantisation (weights int8, activations quantised per
call) with its accuracy cost, and optionally (``--eager-cut``) adapt's eager model with the text cut
after its last real token as the deployed graph has it, which separates the runtime's share of the
speed-up from the cut's.

Each side lives in its own worker process (model or session built once, one untimed warm-up), and
the driver asks them in turn for one timed prediction (side 1, 2, 3, 1, 2, 3, ...), so every side
sees the same machine load. GLIP-T has random weights (``build_glip``'s seed 0; there are no
released weights offline) and the score threshold is 0, so every location is a candidate and the
post-processing does its full work. Printed: each time, the medians, the ratios, the detections'
agreement and the machine line with the load average.
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
# ODinW Aquarium's classes: a typical prompt (22 tokens with the separators).
CLASSES = ["fish", "jellyfish", "penguin", "puffin", "shark", "starfish", "stingray"]


def make_image(path: Path, height: int, width: int) -> None:
    """A fixed photo-like test image (smooth colour blobs plus noise), JPEG at quality 95."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    coarse = rng.uniform(0, 255, size=(height // 64 + 2, width // 64 + 2, 3)).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.float32)
    noisy = np.clip(smooth + rng.normal(0, 12, size=smooth.shape), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(path, quality=95)


def build_detector(args: argparse.Namespace) -> Any:
    """adapt's Detector on the model's architecture with seeded random weights, score threshold 0."""
    import torch

    from adapt.detector import Detector
    from adapt.model import GLIPConfig, build_glip
    from adapt.model.config import model_config

    torch.set_num_threads(args.threads)
    cfg = GLIPConfig.from_dict(model_config(args.model)["arch"])
    cfg.inference.score_threshold = 0.0
    return Detector(build_glip(cfg, seed=0))


# --------------------------------------------------------------------------------------------------
# Workers: build once, warm up once, then one timed prediction per line read from stdin.


def worker(args: argparse.Namespace) -> int:
    if args.side in ("eager", "eager_cut"):
        import torch

        from adapt.deploy.graph import used_tokens
        from adapt.model.language import TextFeatures

        detector = build_detector(args)
        query = detector._text_query(detector.encode(classes=CLASSES)[0])
        with torch.no_grad():
            text = query.text(1)
        if args.side == "eager_cut":  # adapt's model with the deployed graph's text: cut after its tokens
            keep = used_tokens(text.mask)
            text = TextFeatures(text.hidden[:, :keep], text.mask[:, :keep], text.embedded[:, :keep])
        detector._queries = lambda *a, **k: [type(query)(query.names, query.label_to_tokens, lambda n: text)]

        def predict() -> Any:
            return detector.predict([args.image], batch_size=1)[0]

        def result(r: Any) -> dict[str, Any]:
            return {"boxes": r.boxes.tolist(), "scores": r.scores.tolist(), "labels": r.labels.tolist()}
    else:
        from adapt.deploy.runtime import DeployedDetector

        runtime = DeployedDetector(args.onnx, threads=args.threads)

        def predict() -> Any:
            return runtime.predict([args.image], batch_size=1)[0]

        def result(r: Any) -> dict[str, Any]:
            return {"boxes": r.boxes.tolist(), "scores": r.scores.tolist(), "labels": r.labels.tolist()}

    last = predict()  # warm-up: first-call allocations, onnxruntime's kernel selection
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        start, cpu = time.perf_counter(), time.process_time()
        last = predict()
        print(
            json.dumps({"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu}), flush=True
        )
    Path(args.out).write_text(json.dumps(result(last)))
    return 0


# --------------------------------------------------------------------------------------------------
# Driver.


def export(args: argparse.Namespace, out: Path, deform_conv: str) -> float:
    """Write the class-list detector of the random-weight model; returns the export's seconds."""
    from adapt.deploy.export import export_onnx
    from adapt.deploy.source import from_detector

    detector = build_detector(args)
    source = from_detector(
        detector, CLASSES, identity={"kind": "classes", "model": args.model, "benchmark": True}
    )
    start = time.perf_counter()
    export_onnx(source, out, deform_conv=deform_conv)
    return time.perf_counter() - start


def quantize(src: Path, out: Path) -> None:
    """onnxruntime's dynamic int8 quantisation of the MatMul/Gemm weights (metadata kept)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(out), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    model, original = onnx.load(str(out)), onnx.load(str(src), load_external_data=False)
    onnx.helper.set_model_props(model, {p.key: p.value for p in original.metadata_props})
    onnx.save(model, str(out))


def start_worker(side: str, args: argparse.Namespace, image: Path, onnx_file: Path | None, out: Path) -> Any:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--side", side, "--image", str(image)]
    cmd += ["--model", args.model, "--threads", str(args.threads), "--out", str(out)]
    if onnx_file is not None:
        cmd += ["--onnx", str(onnx_file)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    return proc


def ask(proc: Any) -> dict[str, Any]:
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"worker {proc.args[5]} exited with status {proc.wait()}")
    return json.loads(line)


def agreement(ref: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """How far ``new``'s detections are from ``ref``'s: top-100 overlap (same label, IoU > 0.5,
    one to one), score and box differences over the matched pairs."""
    import numpy as np

    a_boxes, b_boxes = np.array(ref["boxes"]).reshape(-1, 4), np.array(new["boxes"]).reshape(-1, 4)
    a_scores, b_scores = np.array(ref["scores"]), np.array(new["scores"])
    a_labels, b_labels = np.array(ref["labels"]), np.array(new["labels"])

    def area(b: Any) -> Any:
        return (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)

    lt = np.maximum(a_boxes[:, None, :2], b_boxes[None, :, :2])
    rb = np.minimum(a_boxes[:, None, 2:], b_boxes[None, :, 2:])
    wh = np.clip(rb - lt + 1, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    iou = inter / (area(a_boxes)[:, None] + area(b_boxes)[None, :] - inter)
    iou[a_labels[:, None] != b_labels[None, :]] = 0
    taken: set[int] = set()
    score_diffs, box_diffs = [], []
    for i in np.argsort(-a_scores, kind="stable"):
        row = iou[i].copy()
        row[list(taken)] = 0
        if row.size == 0 or row.max() <= 0.5:
            continue
        j = int(row.argmax())
        taken.add(j)
        score_diffs.append(float(abs(a_scores[i] - b_scores[j])))
        box_diffs.append(float(np.abs(a_boxes[i] - b_boxes[j]).max()))
    return {
        "detections": [len(a_scores), len(b_scores)],
        "top100_overlap": len(score_diffs) / max(len(a_scores), 1),
        "max_score_diff": max(score_diffs, default=0.0),
        "median_score_diff": statistics.median(score_diffs) if score_diffs else 0.0,
        "max_box_diff": max(box_diffs, default=0.0),
    }


def machine_line(threads: int) -> dict[str, Any]:
    import onnxruntime
    import torch

    from adapt.runs.results import machine_info

    torch.set_num_threads(threads)
    info = machine_info("cpu")
    info["onnxruntime"] = onnxruntime.__version__
    info["load_average"] = [round(v, 2) for v in os.getloadavg()]
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3, help="timed predictions per side (median)")
    parser.add_argument("--model", default="glip_t")
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333, help="1333 pads to 1344 (multiple of 32)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--forms", nargs="+", default=["deformconv", "gather"], help="deformable-conv forms")
    parser.add_argument("--int8", action="store_true", help="also time the dynamic int8 quantisation")
    parser.add_argument(
        "--eager-cut",
        action="store_true",
        help="also time adapt's eager model with the text cut to its tokens",
    )
    parser.add_argument("--onnx-dir", help="keep (and reuse) the exported files here")
    parser.add_argument("--json", help="write the times, medians, ratios and agreement here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--side", help=argparse.SUPPRESS)
    parser.add_argument("--image", help=argparse.SUPPRESS)
    parser.add_argument("--onnx", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)

    machine = machine_line(args.threads)
    print(
        f"# {machine['cpu']}, {args.threads} threads, torch {machine['torch']}, onnxruntime "
        f"{machine['onnxruntime']}; {args.model} {args.height}x{args.width}; "
        f"load average {machine['load_average']}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="deploy_speed_") as tmp:
        tmp_path = Path(tmp)
        files_dir = Path(args.onnx_dir) if args.onnx_dir else tmp_path
        files_dir.mkdir(parents=True, exist_ok=True)
        image = tmp_path / "image.jpg"
        make_image(image, args.height, args.width)
        sides: list[tuple[str, Path | None]] = [("eager", None)]
        if args.eager_cut:
            sides.append(("eager_cut", None))
        exports: dict[str, float] = {}
        for form in args.forms:
            onnx_file = files_dir / f"{args.model}_{form}.onnx"
            if not onnx_file.is_file():
                exports[form] = export(args, onnx_file, form)
                print(f"export {form}: {exports[form]:.1f} s -> {onnx_file}", flush=True)
            sides.append((f"onnx_{form}", onnx_file))
        if args.int8:
            int8_file = files_dir / f"{args.model}_{args.forms[0]}_int8.onnx"
            if not int8_file.is_file():
                quantize(files_dir / f"{args.model}_{args.forms[0]}.onnx", int8_file)
            sides.append((f"onnx_{args.forms[0]}_int8", int8_file))

        procs = {}
        for name, onnx_file in sides:
            side = name if name.startswith("eager") else "onnx"
            procs[name] = start_worker(side, args, image, onnx_file, tmp_path / f"{name}.json")
            ask(procs[name])  # built and warmed up (one at a time: building is heavy too)
        times: dict[str, list[float]] = {name: [] for name, _ in sides}
        cpu: dict[str, list[float]] = {name: [] for name, _ in sides}
        for rep in range(args.reps):
            for name, _ in sides:
                procs[name].stdin.write("run\n")
                procs[name].stdin.flush()
                r = ask(procs[name])
                times[name].append(r["seconds"])
                cpu[name].append(r["cpu"])
                print(f"rep {rep + 1} {name}: {r['seconds']:.3f} s (CPU {r['cpu']:.3f} s)", flush=True)
        for proc in procs.values():
            proc.stdin.write("stop\n")
            proc.stdin.close()
            proc.wait()
        results = {name: json.loads((tmp_path / f"{name}.json").read_text()) for name, _ in sides}

    medians = {name: statistics.median(v) for name, v in times.items()}
    report: dict[str, Any] = {
        "machine": machine,
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "model": args.model,
        "image": [args.height, args.width],
        "threads": args.threads,
        "times_s": times,
        "cpu_s": cpu,
        "median_s": medians,
        "speedup_vs_eager": {n: medians["eager"] / m for n, m in medians.items() if n != "eager"},
        "export_s": exports,
        "agreement_vs_eager": {n: agreement(results["eager"], r) for n, r in results.items() if n != "eager"},
    }
    int8_name = f"onnx_{args.forms[0]}_int8"
    if int8_name in results:
        report["int8_vs_fp32_onnx"] = agreement(results[f"onnx_{args.forms[0]}"], results[int8_name])
    for name, m in medians.items():
        extra = "" if name == "eager" else f"  ({medians['eager'] / m:.2f}x eager)"
        print(f"median {name}: {m:.3f} s{extra}")
    print(
        json.dumps({k: report[k] for k in report if k.startswith("agree") or k.startswith("int8")}, indent=1)
    )
    print(f"# load average after: {report['load_average_after']}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
