"""Does each mode train a detector family, and what does a step cost? The `_mini` configs on the demo.

For each mini config and training mode: the job's own pieces (the composed config of
``python -m adapt.run task=demo model=<model> mode=<mode>``: the family, its ``FamilyPolicy``, the
mode's optimiser, ``FamilyAdaptation``, the family's collate), ``--steps`` optimiser steps on the
demo's training split (5 images, 98 boxes, batch 4 as the recipe, gradient clipping at the
trainer config's norm, images in a fixed order, no flip, so that the loss is comparable), timed per
step. The training loss of the whole split (the same two batches, the module in training mode,
no gradient) is taken before the first step and after the last. Printed as a Markdown table, with
the machine.

    PYTHONPATH=. python benchmarks/families_training.py --steps 20
    PYTHONPATH=. python benchmarks/families_training.py --models owlv2_mini --modes prompt full --steps 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
from hydra.utils import instantiate

from adapt.config import compose_config
from adapt.data import build_task
from adapt.data.transforms import Compose
from adapt.families import build_family
from adapt.markdown import md_table
from adapt.modes import build_policy
from adapt.modes.family import FamilyPolicy
from adapt.runs.results import machine_info
from adapt.train.family_data import FamilyCollate
from adapt.train.family_module import FamilyAdaptation

MODELS = ["grounding_dino_mini", "mm_grounding_dino_mini", "owlv2_mini"]
MODES = ["prompt", "linear", "full", "lora"]


def build(model: str, mode: str) -> tuple[FamilyAdaptation, list[dict[str, Any]], float]:
    """The module as the job builds it, the demo's training batches and the clipping norm."""
    cfg = compose_config([f"model={model}", f"mode={mode}", "task=demo", "shots=all"])
    task = build_task(cfg.task)
    family = build_family(cfg.model)
    prompt = family.encode_prompt(task.class_names)
    policy = FamilyPolicy(build_policy(cfg.mode), prompt, cfg.model.get("lora_targets"))
    optimizer = instantiate(cfg.mode.optimizer)
    module = FamilyAdaptation(family, policy, prompt, optimizer=optimizer, seed=int(cfg.seed))
    data = task.dataset("train", transforms=Compose([]))
    collate = FamilyCollate(family.processor.image_processor)
    batch_size = int(cfg.data.batch_size)
    samples = [data[i] for i in range(len(data))]
    batches = [collate(samples[i : i + batch_size]) for i in range(0, len(samples), batch_size)]
    return module, batches, float(cfg.trainer.gradient_clip_val)


def split_loss(module: FamilyAdaptation, batches: list[dict[str, Any]]) -> float:
    """Mean training loss over the split's batches (training mode, as the steps see it; no grad)."""
    with torch.no_grad():
        return statistics.fmean(float(module.training_step(b, 0)) for b in batches)


def measure(model: str, mode: str, steps: int) -> dict[str, Any]:
    module, batches, clip = build(model, mode)
    torch.manual_seed(0)
    module.train()
    opt = module.configure_optimizers()
    trainable = [p for p in module.parameters() if p.requires_grad]
    before = split_loss(module, batches)
    times = []
    for step in range(steps):
        batch = batches[step % len(batches)]
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = module.training_step(batch, step)
        assert loss is not None
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, clip)
        opt.step()
        times.append(time.perf_counter() - start)
    after = split_loss(module, batches)
    return {
        "model": model,
        "mode": mode,
        "trainable": sum(p.numel() for p in trainable),
        "before": before,
        "after": after,
        "step_ms": 1000 * statistics.median(times[1:] if len(times) > 1 else times),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--modes", nargs="+", default=MODES)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for model in args.models:
        for mode in args.modes:
            r = measure(model, mode, args.steps)
            rows.append(
                [
                    r["model"],
                    r["mode"],
                    f"{r['trainable']:,}",
                    f"{r['before']:.3f}",
                    f"{r['after']:.3f}",
                    f"{r['after'] / r['before']:.2f}",
                    f"{r['step_ms']:.0f}",
                ]
            )
            print(" | ".join(rows[-1]), flush=True)
    header = ["model", "mode", "trainable", "loss before", f"after {args.steps} steps", "ratio", "ms/step"]
    print()
    print("\n".join(md_table(header, rows, align="llrrrrr")))
    print(f"\nmachine: {machine_info()}, torch threads {args.threads}, load average {_load()}")
    return 0


def _load() -> str:
    try:
        with open("/proc/loadavg", encoding="ascii") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


if __name__ == "__main__":
    raise SystemExit(main())
