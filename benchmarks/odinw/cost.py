"""What one ODinW-13 sweep costs: measure t_step, t_img and FLOPs, then turn them into device-hours.

    python benchmarks/odinw/cost.py --model glip_t glip_l --device cuda --json cost.json
    python benchmarks/odinw/cost.py --model glip_t --sweep multirun/odinw13/glip_t   # E from a sweep
    python benchmarks/odinw/cost.py --model glip_t --skip-timing --peak-tflops 989   # FLOPs only

Measured (``measure.py``; random, seeded weights: speed does not depend on them), on ``--device``:

* ``t_step(mode)``: one optimiser step as the job runs it: the job's Lightning ``Trainer`` fitting
  ``GLIPAdaptation`` with the mode's policy and optimiser, timed from ``on_train_batch_start`` to
  ``on_train_batch_end`` (forward with targets, loss, backward, clipping, AdamW step). Each training
  scale (short side 480..800, long side capped at 1333) is timed on its own, after ``--warmup``
  steps; t_step weights the per-scale medians by how often a batch of ``--batch`` images pads to
  that scale.
* ``t_img``: seconds per image of ``Trainer.validate`` batches at the official test size.
* FLOPs per training step and per evaluated image (``adapt.flops.count_flops``, on the real step).

It then combines them with the protocol (``protocol.py``: ``conf/sweep/odinw13.yaml`` expanded as
adapt's sweeper expands it, ``conf/recipe/official.yaml``, the dataset sizes in ``odinw13_sizes.csv``) into
the README's GPU-hours table (``estimate.py``, ``render.py``), with the number of evaluation periods
E either read from a finished sweep (``--sweep``: its manifest and results.json files) or bounded by
the protocol (early-stop patience + 1 <= E <= epochs).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable, as `python -m` does
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

from adapt.atomic import write_json
from adapt.config import compose_config, group_options
from adapt.grid import ZERO_MODE, mode_sort_key
from adapt.modes import build_policy
from adapt.runs.results import machine_info
from benchmarks.odinw.estimate import estimates_for, read_sweep, t_job_from_sweep
from benchmarks.odinw.measure import (
    OFFICIAL_TEST_HW,
    Setup,
    data_defaults,
    measure_model,
    quiet_lightning,
    trainer_precision,
)
from benchmarks.odinw.protocol import (
    SIZES_CSV,
    load_shots_recipes,
    load_sizes,
    period_counts,
    planned_runs,
    runs_per_task,
    timed_scale_weights,
)
from benchmarks.odinw.render import render_markdown

# The paper's three training modes are measured by default; any configured mode whose policy
# trains can be named (conf/mode/, so a new mode needs no edit here), and any other evaluation-only
# mode besides zero-shot (zero_ensemble) with --eval-modes.
TRAIN_MODES = ("prompt", "linear", "full")


def _configured_policies() -> dict[str, Any]:
    """Every configured mode's policy, each composed as the job composes it."""
    return {m: build_policy(compose_config([f"mode={m}"]).mode) for m in group_options("mode")}


def measurable_modes() -> tuple[str, ...]:
    """The configured modes whose policy trains, each composed as the job composes it."""
    trains = [m for m, policy in _configured_policies().items() if policy.trains]
    return tuple(sorted(trains, key=mode_sort_key))


def eval_only_modes() -> tuple[str, ...]:
    """The configured evaluation-only modes besides zero-shot (``zero_ensemble``), for ``--eval-modes``."""
    modes = [m for m, policy in _configured_policies().items() if m != ZERO_MODE and not policy.trains]
    return tuple(sorted(modes, key=mode_sort_key))


# Example peak for --peak-tflops: NVIDIA's datasheet figure for H100 SXM, dense FP16/BF16 tensor
# cores (no sparsity). A datasheet number, not a measurement.
H100_SXM_DENSE_TFLOPS = 989.0


def build_setup(args: argparse.Namespace, input_cfg: Mapping[str, Any]) -> Setup:
    common = {
        "device": args.device,
        "batch": args.batch,
        "eval_batch": args.eval_batch,
        "warmup": args.warmup,
        "reps": args.reps,
        "task": args.task,
        "timing": not args.skip_timing,
        "flops": not args.skip_flops,
    }
    if args.size is not None:  # tiny smoke run: one S x 5S/3 image size everywhere
        size = int(args.size)
        long = round(size * OFFICIAL_TEST_HW[1] / OFFICIAL_TEST_HW[0])
        return Setup(
            **common,
            train_scales=(size,),
            recipe_scales=(size,),
            max_size_train=long,
            image_hw=(size, long),
            test_size=size,
            max_size_test=long,
            test_hw=(size, long),
        )
    recipe = tuple(sorted(int(v) for v in input_cfg["min_size_train"]))
    return Setup(
        **common,
        train_scales=tuple(sorted(args.train_scales)) if args.train_scales else recipe,
        recipe_scales=recipe,
        max_size_train=int(input_cfg["max_size_train"]),
        image_hw=tuple(args.image_hw) if args.image_hw else OFFICIAL_TEST_HW,
        test_size=int(input_cfg["min_size_test"]),
        max_size_test=int(input_cfg["max_size_test"]),
        test_hw=OFFICIAL_TEST_HW,
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    data = data_defaults()
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", nargs="+", default=["glip_t"], help="conf/model names (glip_t glip_l glip_mini)"
    )
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"]
    )
    parser.add_argument("--modes", nargs="+", default=list(TRAIN_MODES), choices=measurable_modes())
    parser.add_argument(
        "--eval-modes",
        nargs="+",
        default=[],
        choices=eval_only_modes(),
        help="evaluation-only modes to measure per image next to zero-shot (not in the hours)",
    )
    parser.add_argument(
        "--batch", type=int, default=int(data["batch_size"]), help="training batch (conf/data default)"
    )
    parser.add_argument(
        "--eval-batch", type=int, default=int(data["eval_batch_size"]), help="evaluation batch"
    )
    parser.add_argument("--reps", type=int, default=3, help="timed batches per configuration (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed batches before each configuration")
    parser.add_argument(
        "--train-scales",
        nargs="+",
        type=int,
        help="short sides to time (default: the model's multi-scale list)",
    )
    parser.add_argument(
        "--image-hw",
        nargs=2,
        type=int,
        metavar=("H", "W"),
        help="original training image size (default 800 1333)",
    )
    parser.add_argument("--size", type=int, help="tiny smoke run: every image S x 5S/3, one training scale S")
    parser.add_argument(
        "--task", default="odinw/pascalvoc", help="whose prompt the model reads (cost hardly depends on it)"
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        help=f"peak TFLOP/s for FLOP-based lower bounds, e.g. {H100_SXM_DENSE_TFLOPS:g} "
        "(H100 SXM, dense FP16/BF16, datasheet)",
    )
    parser.add_argument("--skip-timing", action="store_true", help="count FLOPs only")
    parser.add_argument("--skip-flops", action="store_true", help="time only")
    parser.add_argument(
        "--sweep", help="a finished sweep folder: E = len(val_history) of its runs, and its wall time"
    )
    parser.add_argument(
        "--t-job",
        type=float,
        help="fixed seconds per run (start, model load); default: from --sweep, else left out",
    )
    parser.add_argument(
        "--devices", nargs="+", type=int, default=[1, 64], help="device counts for the wall-clock columns"
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--json", help="also write the whole report as JSON here (atomically)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure (unless skipped), combine with the protocol, return the report as plain data."""
    from adapt.model.config import model_config

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    quiet_lightning()
    setup = build_setup(args, model_config(args.model[0])["arch"]["input"])
    sizes = load_sizes()
    recipes = load_shots_recipes()
    modes = (ZERO_MODE, *[m for m in args.modes if m != ZERO_MODE])
    points = planned_runs(modes)
    runs = runs_per_task(points)
    tasks = list(dict.fromkeys(p.task for p in points))
    known = {s.task for s in sizes}
    if set(tasks) - known:
        raise SystemExit(f"{SIZES_CSV.name} lacks {sorted(set(tasks) - known)}")
    sizes = [s for s in sizes if s.task in tasks]

    models: dict[str, Any] = {}
    for name in args.model:
        if setup.timing or setup.flops:
            models[name] = measure_model(name, args.modes, setup, args.eval_modes)
        else:
            models[name] = {"model": name, "train": {}, "eval": None, "eval_modes": {}}

    sweeps = {name: read_sweep(args.sweep, name) for name in args.model} if args.sweep else {}
    estimates = []
    for name in args.model:
        sweep = sweeps.get(name)
        t_job = args.t_job
        job_from_sweep = t_job_from_sweep(sweep, sizes) if sweep is not None else None
        if t_job is None and job_from_sweep is not None:
            t_job = job_from_sweep[1]
        estimates += estimates_for(
            name,
            models[name],
            sizes,
            recipes,
            runs,
            setup.batch,
            sweep,
            t_job,
            args.peak_tflops,
            args.devices,
        )

    counts = period_counts(sizes, recipes, setup.batch)
    runs_by_shots: dict[str, dict[str, int]] = defaultdict(dict)
    for (mode, shots), n in runs.items():
        runs_by_shots[str(shots)][mode] = n
    return {
        "machine": machine_info("cuda" if setup.device.startswith("cuda") else "cpu"),
        "settings": {
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(setup).items()},
            "precision": trainer_precision(setup.device),
            "scale_weights": timed_scale_weights(setup.train_scales, setup.recipe_scales, setup.batch),
            "peak_tflops": args.peak_tflops,
            "devices": list(args.devices),
            "t_job": args.t_job,
            "command": " ".join(["python benchmarks/odinw/cost.py", *getattr(args, "argv", [])]),
        },
        "models": models,
        "protocol": {
            "tasks": tasks,
            "modes": list(modes),
            "jobs": sum(runs.values()) * len(sizes),
            "runs_per_task": dict(runs_by_shots),
            "period_counts": {
                str(k): {"steps": v.steps, "val_images": v.val_images} for k, v in counts.items()
            },
            "test_images": sum(s.test for s in sizes),
            "evaluation_bounds": {
                str(k): [r.min_evaluations, r.max_evaluations] for k, r in recipes.items() if k != 0
            },
        },
        "sweeps": [
            {
                "path": s.path,
                "model": s.model,
                "statuses": s.statuses,
                "wall_time_s": s.wall_time_s,
                "wall_by_mode": s.wall_by_mode,
                "evaluations": {f"{m} {k}": v for (m, k), v in s.evaluations.items()},
                "evaluations_by_shots": {str(k): v for k, v in s.evaluations_by_shots().items()},
                "t_job": t_job_from_sweep(s, sizes),
            }
            for s in sweeps.values()
        ],
        "estimates": [
            {**vars(e), "wall_hours": {str(k): v for k, v in e.wall_hours.items()}} for e in estimates
        ],
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    report = run(args)
    text = render_markdown(report)
    print(text, end="")
    if args.json:
        write_json(report, args.json)
        print(f"[cost] wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
