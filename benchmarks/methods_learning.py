"""Do the adaptation methods learn? Every mode on the demo task and on a copy whose class name is a
word the model never saw, under the same steps, seed and data.

    python benchmarks/methods_learning.py                          # glip_mini, CPU, the demo's budget
    python benchmarks/methods_learning.py --epochs 10 --json learning.json
    python benchmarks/methods_learning.py --modes zero prompt fusion_prompt --word blicket

Each (task, mode) is one ``python -m adapt.run`` job (``adapt.runs.job.run_job`` on the composed
config, ``logger=csv``) in its own folder under ``--out``: task ``demo`` (the shipped tree tiles) and
``demo`` with ``task.renames={tree: <word>}`` (the same boxes, the class called ``--word``). Every
training mode gets the same ``trainer.max_epochs`` (so the same optimiser steps; each mode its own
YAML optimiser), the demo's budget otherwise (tiles at their own size, shots 5, seed 3).

What it reports per run: the test AP (COCO, %), the best validation AP, the number of optimiser
steps and the training loss (``train/total``) of the first and of the last step, from the run's
``csv/metrics.csv``. ``--score-threshold`` (default 0) keeps every candidate box: the untrained
mini model scores everything below the official 0.05, which would make every AP 0 whatever the
training did.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable, as `python -m` does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapt.atomic import write_json
from adapt.markdown import md_table

MODES = ("zero", "zero_ensemble", "prompt", "linear", "fusion_prompt", "context_prompt")


def evaluates_only(mode: str) -> bool:
    """Whether ``mode``'s YAML says it trains nothing (``evaluates_only: true``: it runs at shots=0)."""
    from omegaconf import OmegaConf

    from adapt.config import compose_config

    return bool(OmegaConf.select(compose_config([f"mode={mode}"]), "mode.evaluates_only", default=False))


def train_losses(run_dir: Path) -> list[float]:
    """``train/total`` per logged step, from the run's csv logger."""
    path = run_dir / "csv" / "metrics.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [float(row["train/total"]) for row in csv.DictReader(f) if row.get("train/total")]


def run_one(out: Path, task: str, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    from adapt.config import compose_config
    from adapt.runs.job import run_job

    overrides = [
        f"mode={mode}",
        "logger=csv",
        "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1",
        f"trainer.max_epochs={args.epochs}",
        f"model.arch.inference.score_threshold={args.score_threshold}",
        f"seed={args.seed}",
        "shots=0" if evaluates_only(mode) else f"shots={args.shots}",
        *(["task.renames={tree: " + args.word + "}"] if task == "renamed" else []),
        *args.override,
    ]
    run_dir = out / task / mode
    start = time.perf_counter()
    run_job(compose_config([*overrides, "overwrite=true"]), run_dir=run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    losses = train_losses(run_dir)
    return {
        "task": task,
        "mode": mode,
        "label": results.get("mode_label"),
        "status": results.get("status"),
        "trainable": (results.get("params") or {}).get("trainable"),
        "test_ap": (results.get("test") or {}).get("ap"),
        "test_ap50": (results.get("test") or {}).get("ap50"),
        "best_val_ap": results.get("best_val_ap"),
        "steps": len(losses),
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "caption": _caption(run_dir),
        "wall_s": round(time.perf_counter() - start, 1),
        "overrides": overrides,
    }


def _caption(run_dir: Path) -> str | None:
    meta = run_dir / "export" / "adapter_config.json"
    return json.loads(meta.read_text()).get("caption") if meta.is_file() else None


def _num(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def render(rows: Sequence[dict[str, Any]], args: argparse.Namespace) -> str:
    header = [
        "task",
        "mode",
        "trainable",
        "steps",
        "train loss first -> last",
        "best val AP",
        "test AP",
        "AP50",
    ]
    table = [
        [
            "demo" if r["task"] == "demo" else f"demo, tree -> {args.word}",
            f"{r['label']} (`{r['mode']}`)",
            f"{r['trainable']:,}" if r["trainable"] is not None else "–",
            str(r["steps"]) if r["steps"] else "–",
            f"{_num(r['loss_first'], 4)} -> {_num(r['loss_last'], 4)}" if r["steps"] else "–",
            _num(r["best_val_ap"]),
            _num(r["test_ap"]),
            _num(r["test_ap50"]),
        ]
        for r in rows
    ]
    return "\n".join(md_table(header, table)) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--modes", nargs="+", default=list(MODES))
    parser.add_argument("--tasks", nargs="+", default=["demo", "renamed"], choices=["demo", "renamed"])
    parser.add_argument("--word", default="blicket", help="the class name of the renamed task")
    parser.add_argument("--epochs", type=int, default=2, help="evaluation periods (the demo budget: 2)")
    parser.add_argument("--shots", default="5")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--score-threshold", type=float, default=0.0)
    parser.add_argument("--out", default="outputs/methods_learning")
    parser.add_argument("--override", nargs="*", default=[], help="more adapt.run overrides for every job")
    parser.add_argument("--json", help="also write the rows as JSON here (atomically)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "offline")
    out = Path(args.out)
    rows = []
    for task in args.tasks:
        for mode in args.modes:
            print(f"[learning] {task}: {mode}", file=sys.stderr, flush=True)
            rows.append(run_one(out, task, mode, args))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(render(rows, args), end="")
    if args.json:
        write_json({"settings": vars(args), "rows": rows}, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
