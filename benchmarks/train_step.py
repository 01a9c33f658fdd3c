"""Prompt tuning against full fine-tuning: FLOPs, peak memory and time of one training step.

    python benchmarks/train_step.py          # glip_t: counts at batch 4 x 800, time at batch 1 x 480
    python benchmarks/train_step.py --skip-timing --json step.json
    python benchmarks/train_step.py --model glip_mini --batch 1 --scale 320 --time-scale 320 --reps 1

What it compares (``use_checkpoint`` pinned per configuration; ``feature_cache`` hit or not):

* ``prompt ckpt``: prompt tuning as before (the official fusion checkpointing: recomputed in backward);
* ``prompt``: checkpointing off (``use_checkpoint: auto`` where the fusion fits in memory);
* ``prompt cached``: off, and the backbone's output taken from the feature cache (every step after a
  view's first visit);
* ``full ckpt`` / ``full``: full fine-tuning with / without checkpointing;
* ``linear`` and ``linear_cached`` (tower in eval mode, its output cached: the step is the
  prediction layers and the loss).

Counts (no arithmetic, shapes only: the model is on meta tensors, the loss runs for real on CPU
stand-ins, as in ``benchmarks/odinw/cost.py``, whose helpers this reuses):

* FLOPs: ``torch.utils.flop_counter`` through ``cost.count_flops`` (deform_conv2d added), forward,
  loss and backward. A cached configuration's count is the step's on precomputed features.
* Peak memory: the largest sum of live tensor storages during the step (forward, loss, backward and
  the AdamW step, whose state is created at the first step), counted by a dispatch mode that sees
  every tensor an op creates and when its storage is freed. Parameters and buffers count from the
  start; the batch's cached features count as live (they are in the cache); the cache's other
  entries do not (its budget is ``feature_cache_mb``). This is what a caching-free allocator would
  peak at: device-independent, but no fragmentation, workspace or framework overhead.

Time (real steps on ``--device``): ``GLIPAdaptation.training_step``, backward, gradient clipping
at 1.0, AdamW step, as the job's Trainer runs them; the configurations alternate within each
repetition (prompt/full interleaved, then linear/linear_cached), medians and their ratios.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import statistics
import sys
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from adapt.atomic import write_json
from adapt.train.results import machine_info

HERE = Path(__file__).resolve().parent


def _load_cost() -> Any:
    spec = importlib.util.spec_from_file_location("odinw_cost", HERE / "odinw" / "cost.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["odinw_cost"] = module
    spec.loader.exec_module(module)
    return module


cost = _load_cost()

# (name, mode, use_checkpoint, cached: None | "backbone" | "tower", mode yaml)
CONFIGS = (
    ("prompt ckpt", "prompt", True, None, "prompt"),
    ("prompt", "prompt", False, None, "prompt"),
    ("prompt cached", "prompt", False, "backbone", "prompt"),
    ("full ckpt", "full", True, None, "full"),
    ("full", "full", False, None, "full"),
    ("linear", "linear", False, None, "linear"),
    ("linear cached", "linear", False, "tower", "linear_cached"),
)
TIMED = {
    "prompt": ("prompt ckpt", "prompt", "prompt cached", "full ckpt"),
    "linear": ("linear", "linear cached"),
}


class LiveBytes(TorchDispatchMode):
    """Bytes of live tensor storages and their peak: each op's outputs count until their storage is freed."""

    def __init__(self, existing: Sequence[torch.Tensor] = ()) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()
        for t in existing:
            self._track(t)

    def _track(self, t: Any) -> None:
        if not isinstance(t, torch.Tensor):
            return
        storage = t.untyped_storage()
        key = id(storage)
        if key in self._seen:
            return
        self._seen.add(key)
        n = storage.nbytes()
        self.live += n
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key, n)

    def _free(self, key: int, n: int) -> None:
        self._seen.discard(key)
        self.live -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            self._track(t)
        return out


def _module(model: str, mode_yaml: str, checkpoint: bool, task: str, device: str, cache_mb: float) -> Any:
    """cost.build_module with the mode yaml's policy (linear_cached) and a feature cache."""
    from adapt.train.modes import build_policy

    module = cost.build_module(
        model, "linear" if mode_yaml == "linear_cached" else mode_yaml, task, device, checkpoint
    )
    mode_cfg = cost._mode_cfg("linear") if mode_yaml == "linear_cached" else cost._mode_cfg(mode_yaml)
    if mode_yaml == "linear_cached":
        mode_cfg = {**mode_cfg, "cache_tower": True}
    policy = build_policy(mode_cfg)
    module.policy = policy
    module.trainable = policy.apply(module.model)
    module.feature_cache.max_bytes = int(cache_mb * 2**20)
    return module


def _batch(module: Any, batch: int, scale: int, hw: tuple[int, int]) -> dict[str, Any]:
    from adapt.train.datamodule import GLIPCollate

    setup = cost.Setup(batch=batch, train_scales=(scale,), recipe_scales=(scale,), image_hw=hw)
    transform = cost._transform(setup, scale)
    data = cost.SyntheticImages(batch, hw, len(module.prompt.class_names), lambda i: transform)
    return GLIPCollate(module.prompt, module.model.cfg.input)([data[i] for i in range(batch)])


def count_step(
    model: str, name: str, batch: int, scale: int, hw: tuple[int, int], task: str, what: str
) -> dict[str, Any]:
    """FLOPs (``what="flops"``) or peak live bytes of one meta training step of configuration ``name``."""
    _, _, checkpoint, cached, mode_yaml = next(c for c in CONFIGS if c[0] == name)
    module = _module(model, mode_yaml, checkpoint, task, "meta", 0)
    data = _batch(module, batch, scale, hw)
    module.train()
    net = module.model
    with cost._meta_compat():
        module.text_features(1)
    images = data["images"].to("meta")
    optimizer = module.configure_optimizers()
    with cost._meta_compat():
        text = module.text_features(batch, data)
        extra: dict[str, Any] = {}
        with torch.no_grad():
            if cached == "backbone":
                extra["features"] = net.backbone(images)
            elif cached == "tower":
                extra["fused"] = net.head.tower(net.backbone(images), text)
    original = net.loss
    net.loss = cost.LossOnCPU(original, net.anchor_generator, module.prompt.attention_mask)
    held = [*net.parameters(), *net.buffers(), images, *tree_flatten(extra)[0]]
    held += [t for t in vars(text).values() if isinstance(t, torch.Tensor)]

    def step() -> None:
        losses = net(images, data["image_sizes"], text=text, targets=data["targets"], **extra)
        losses["total"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    # One quantity per call (see main): FlopCounterMode's module tracking keeps module outputs
    # alive, which would inflate a memory count taken in the same pass.
    try:
        if what == "flops":
            with cost._meta_compat():
                counted = cost.count_flops(step)
            return {"flops": counted.total, "uncounted_ops": counted.uncounted}
        live = LiveBytes(held)
        with cost._meta_compat(), live:
            step()
        return {"peak_bytes": live.peak, "start_bytes": _start(held)}
    finally:
        net.loss = original


def _start(held: Sequence[torch.Tensor]) -> int:
    """Bytes of the distinct storages held before the step."""
    return sum({id(t.untyped_storage()): t.untyped_storage().nbytes() for t in held}.values())


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed_step(module: Any, optimizer: Any, batch: dict[str, Any], device: str) -> float:
    _sync(device)
    start = time.perf_counter()
    module.on_train_batch_start(batch, 0)
    loss = module.training_step(batch, 0)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in module.model.parameters() if p.requires_grad], 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    _sync(device)
    return time.perf_counter() - start


def time_group(
    model: str,
    names: Sequence[str],
    batch: int,
    scale: int,
    hw: tuple[int, int],
    task: str,
    device: str,
    reps: int,
) -> dict[str, Any]:
    """Interleaved real steps of ``names``: one warm-up each (fills the caches), then ``reps`` rounds."""
    modules: dict[tuple[str, bool], Any] = {}
    runs: dict[str, Callable[[], float]] = {}
    for name in names:
        _, mode, checkpoint, cached, mode_yaml = next(c for c in CONFIGS if c[0] == name)
        key = (mode_yaml, mode == "full")
        if key not in modules:
            modules[key] = _module(model, mode_yaml, checkpoint, task, device, 0)
            modules[key].to(device)
            modules[key].train()
            modules[key]._optimizer = modules[key].configure_optimizers()
        module = modules[key]
        data = cost._to(_batch(module, batch, scale, hw), device)

        def run(
            module: Any = module, data: dict = data, checkpoint: bool = checkpoint, cached: Any = cached
        ) -> float:
            from adapt.model.fusion import VLFuse

            for fuse in module.model.modules():
                if isinstance(fuse, VLFuse):
                    fuse.checkpoint_policy = fuse.use_checkpoint = checkpoint
            module.feature_cache.max_bytes = 2**40 if cached else 0
            return _timed_step(module, module._optimizer, data, device)

        runs[name] = run
    times: dict[str, list[float]] = {name: [] for name in names}
    warmup = {name: runs[name]() for name in names}
    for rep in range(reps):
        for name in names:
            times[name].append(runs[name]())
            print(f"[train_step] rep {rep}: {name}: {times[name][-1]:.2f} s", file=sys.stderr, flush=True)
    medians = {name: statistics.median(v) for name, v in times.items()}
    del modules, runs
    gc.collect()
    return {"warmup_s": warmup, "times_s": times, "median_s": medians}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--model", default="glip_t", help="conf/model name")
    parser.add_argument("--task", default="odinw/pascalvoc", help="whose prompt the model reads")
    parser.add_argument("--batch", type=int, default=4, help="batch of the FLOP and memory counts")
    parser.add_argument("--scale", type=int, default=800, help="training short side of the counts")
    parser.add_argument("--time-batch", type=int, default=1, help="batch of the timed steps")
    parser.add_argument("--time-scale", type=int, default=480, help="training short side of the timed steps")
    parser.add_argument("--image-hw", nargs=2, type=int, default=[800, 1333], metavar=("H", "W"))
    parser.add_argument("--reps", type=int, default=2, help="timed rounds (after one warm-up round)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--configs", nargs="+", help="count only these configurations (names as printed)")
    parser.add_argument("--skip-counts", action="store_true")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--json", help="also write the report as JSON here (atomically)")
    return parser.parse_args(argv)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cost._quiet_lightning()
    hw = (args.image_hw[0], args.image_hw[1])
    report: dict[str, Any] = {
        "machine": machine_info(args.device),
        "settings": {
            **vars(args),
            "command": " ".join(["python benchmarks/train_step.py", *(argv or sys.argv[1:])]),
        },
        "counts": {},
        "timing": {},
    }
    if not args.skip_counts:
        for name, *_ in CONFIGS:
            if args.configs and name not in args.configs:
                continue
            print(f"[train_step] counting {name}", file=sys.stderr, flush=True)
            report["counts"][name] = {}
            for what in ("flops", "memory"):
                report["counts"][name].update(
                    count_step(args.model, name, args.batch, args.scale, hw, args.task, what)
                )
                gc.collect()
    if not args.skip_timing:
        for group, names in TIMED.items():
            report["timing"][group] = time_group(
                args.model, names, args.time_batch, args.time_scale, hw, args.task, args.device, args.reps
            )
    print(render(report), end="")
    if args.json:
        write_json(report, args.json)
    return 0


def render(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [f"machine: {report['machine']}", ""]
    counts = report["counts"]
    if counts:
        lines += [
            f"Counts, {s['model']}, batch {s['batch']}, short side {s['scale']} (meta tensors):",
            "",
            "| configuration | TFLOP | x full ckpt | x full | peak GiB | x full ckpt | x full |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, c in counts.items():
            fc, f = counts.get("full ckpt") or {}, counts.get("full") or {}
            flops, peak = c["flops"], c["peak_bytes"]
            lines.append(
                f"| {name} | {flops / 1e12:.2f} | {_fmt(_ratio(flops, fc.get('flops')))} | "
                f"{_fmt(_ratio(flops, f.get('flops')))} | {peak / 2**30:.2f} | "
                f"{_fmt(_ratio(peak, fc.get('peak_bytes')))} | {_fmt(_ratio(peak, f.get('peak_bytes')))} |"
            )
        lines.append("")
    for t in report["timing"].values():
        med = t["median_s"]
        ref = med.get("full ckpt") or med.get("linear")
        ref_name = "full ckpt" if "full ckpt" in med else "linear"
        lines += [
            f"Time, {s['model']}, batch {s['time_batch']}, short side {s['time_scale']}, {s['device']} "
            f"(median of {s['reps']}, interleaved):",
            "",
            f"| configuration | s / step | x {ref_name} |",
            "|---|---|---|",
        ]
        lines += [f"| {name} | {v:.2f} | {_fmt(_ratio(v, ref))} |" for name, v in med.items()]
        lines.append("")
    return "\n".join(lines)


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


if __name__ == "__main__":
    raise SystemExit(main())
