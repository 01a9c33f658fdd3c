"""Where GLIP's time goes: per-module time share next to FLOP share (torch.profiler + FlopCounterMode).

    python benchmarks/profile_model.py                              # GLIP-T inference, 800 x 1333
    python benchmarks/profile_model.py --height 400 --width 666     # quicker
    python benchmarks/profile_model.py --train prompt --height 320 --width 512   # one training step
    python benchmarks/profile_model.py --dtype bf16                 # under CPU/GPU bf16 autocast

Every module of interest (Swin, FPN, BERT, each VLFuse / head BERT layer / DyConv, the head's
predictions, post-processing) runs inside a ``record_function`` range opened by forward hooks, so
the profiler's per-range CPU time is its wall time in this single-process run; FLOPs per module
come from ``torch.utils.flop_counter`` (with ``adapt.flops``' deform_conv2d formula).
A module whose time share exceeds its FLOP share is where kernels run below the machine's matmul
speed. The top operators by self time are printed too. Random, seeded weights.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from model_speed import model_inputs
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

from adapt.detector import model_config
from adapt.markdown import md_table
from adapt.model import GLIPConfig, build_glip
from adapt.runs.results import machine_info


def regions(model: nn.Module) -> dict[str, nn.Module]:
    """Label -> module, in forward order; the head's predictions are the head minus its tower."""
    out: dict[str, nn.Module] = {
        "BERT (language backbone)": model.language_backbone,
        "Swin": model.backbone.body,
        "FPN": model.backbone.fpn,
    }
    for i, step in enumerate(model.head.dyhead_tower):
        out[f"tower.{i:02d} {type(step).__name__}"] = step
    out["head (all)"] = model.head
    out["post-processing"] = model.postprocessor
    out["loss"] = model.loss
    return out


def instrument(modules: dict[str, nn.Module]) -> list[Any]:
    """Forward hooks opening/closing a record_function range per module; returns the handles."""
    handles = []
    for label, module in modules.items():
        stack: list[Any] = []

        def pre(_m: nn.Module, _args: Any, label: str = label, stack: list[Any] = stack) -> None:
            rf = record_function(label)
            rf.__enter__()
            stack.append(rf)

        def post(_m: nn.Module, _args: Any, _out: Any, stack: list[Any] = stack) -> None:
            stack.pop().__exit__(None, None, None)

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    return handles


def make_inputs(cfg: GLIPConfig, batch: int, height: int, width: int, device: str) -> dict[str, Any]:
    """model_speed.py's inputs, with two boxes per image for a training step."""
    return model_inputs(cfg, batch, device, (height, width), targets=True)


def build(model_name: str, mode: str | None, device: str) -> nn.Module:
    cfg = GLIPConfig.from_dict(model_config(model_name)["arch"])
    model = build_glip(cfg).to(device)
    if mode is None:
        return model.eval()
    from adapt.config import compose_config
    from adapt.modes import build_policy  # the mode's requires_grad and train/eval flags

    policy = build_policy(compose_config([f"mode={mode}", "shots=5"]).mode)
    policy.apply(model)
    model.train()
    policy.set_module_modes(model)
    return model


def step_fn(
    model: nn.Module, inputs: dict[str, Any], mode: str | None, autocast: Any, backward: bool = True
) -> Callable[[], Any]:
    """Inference, or one training step (``backward=False``: its forward and loss only)."""
    kwargs = {k: inputs[k] for k in ("input_ids", "attention_mask", "label_to_tokens")}

    def infer() -> Any:
        with torch.no_grad(), autocast():
            return model(inputs["images"], inputs["image_sizes"], **kwargs)

    def forward() -> Any:
        with autocast():
            losses = model(inputs["images"], inputs["image_sizes"], targets=inputs["targets"], **kwargs)
        return sum(v for k, v in losses.items() if k != "total") if "total" not in losses else losses["total"]

    def train() -> Any:
        forward().backward()
        model.zero_grad(set_to_none=True)

    if mode is None:
        return infer
    return train if backward else forward


def profile_once(fn: Callable[[], Any], labels: list[str]) -> tuple[dict[str, float], float, list[tuple]]:
    """Wall seconds per labelled range and in total, plus the top operators by self CPU time."""
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    total = time.perf_counter() - start
    per: dict[str, float] = dict.fromkeys(labels, 0.0)
    for evt in prof.events():
        if evt.name in per:
            per[evt.name] += evt.time_range.elapsed_us() / 1e6
    ops = [
        (e.key, e.self_cpu_time_total / 1e6, e.count)
        for e in prof.key_averages()
        if e.key not in per and not e.key.startswith("ProfilerStep")
    ]
    ops.sort(key=lambda r: -r[1])
    return per, total, ops[:15]


def module_flops(
    fn: Callable[[], Any], modules: dict[str, nn.Module], model: nn.Module
) -> tuple[dict, float]:
    """FLOPs per labelled module (forward and, in a training step, backward) and in total."""
    from torch.utils.flop_counter import FlopCounterMode

    from adapt.flops import extra_formulas

    counter = FlopCounterMode(display=False, custom_mapping=extra_formulas())
    with counter:
        fn()
    counts = counter.get_flop_counts()
    # FlopCounterMode names a submodule "<root class>.<qualified name>".
    names = {m: f"{type(model).__name__}.{n}" for n, m in model.named_modules()}
    out = {}
    for label, module in modules.items():
        out[label] = float(sum(counts.get(names[module], {}).values()))
    return out, float(counter.get_total_flops())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="glip_t")
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train", metavar="MODE", help="profile one training step of this mode instead")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--json", help="also write the table here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = build(args.model, args.train, args.device)
    inputs = make_inputs(model.cfg, args.batch, args.height, args.width, args.device)

    def autocast() -> Any:
        if args.dtype == "bf16":
            return torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16)
        return nullcontext()

    fn = step_fn(model, inputs, args.train, autocast)
    modules = regions(model)
    flops, total_flops = module_flops(fn, modules, model)
    if args.train:
        # The ranges time forwards only (a backward runs outside them), so a training step's
        # per-module FLOPs are its forward's too; the backward's land in "other".
        flops, _ = module_flops(step_fn(model, inputs, args.train, autocast, backward=False), modules, model)
    for _ in range(args.warmup):
        fn()
    handles = instrument(modules)
    per, total, ops = profile_once(fn, list(modules))
    for h in handles:
        h.remove()

    # The head's predictions: head minus its tower steps.
    tower = [k for k in modules if k.startswith("tower.")]
    per["head predictions"] = per["head (all)"] - sum(per[k] for k in tower)
    flops["head predictions"] = flops["head (all)"] - sum(flops[k] for k in tower)
    # Everything outside the ranges: anchors, glue and, in a training step, the whole backward.
    top = [k for k in modules if not k.startswith("tower.")]
    per["other (glue; backward)"] = total - sum(per[k] for k in top)
    flops["other (glue; backward)"] = total_flops - sum(flops[k] for k in top)
    m = machine_info(args.device)
    what = f"one {args.train} training step" if args.train else "inference"
    print(
        f"# {args.model} {what}, batch {args.batch}, {args.height}x{args.width}, {args.dtype}, "
        f"{args.threads} threads; {m['cpu']}, torch {m['torch']}"
    )
    print(
        f"# wall {total:.2f} s (profiled), {total_flops / 1e9:.1f} GFLOP "
        f"({total_flops / total / 1e9:.1f} GFLOP/s)"
    )
    rows, table = [], []
    for label in [*modules, "head predictions", "other (glue; backward)"]:
        if label == "head (all)" or (label == "loss" and not args.train):
            continue
        s, f = per[label], flops.get(label, 0.0)
        rows.append({"module": label, "seconds": s, "flops": f})
        rate = f / s / 1e9 if s > 0 else 0.0
        table.append(
            [
                label,
                f"{s:.3f}",
                f"{100 * s / total:.1f}",
                f"{f / 1e9:.2f}",
                f"{100 * f / total_flops:.1f}",
                f"{rate:.1f}",
            ]
        )
    print("\n".join(md_table(["module", "s", "time %", "GFLOP", "FLOP %", "GFLOP/s"], table, "lrrrrr")))
    print("\n# top operators by self CPU time")
    for key, s, count in ops:
        print(f"  {key:<50} {s:8.3f} s  {100 * s / total:5.1f} %  x{count}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "machine": m,
                    "args": vars(args),
                    "total_s": total,
                    "total_flops": total_flops,
                    "rows": rows,
                    "ops": ops,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
