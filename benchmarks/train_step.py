"""Prompt tuning against full fine-tuning: FLOPs, peak memory and time of one training step.

    python benchmarks/train_step.py                       # glip_t, batch 1, short side 320, CPU
    python benchmarks/train_step.py --batch 4 --short-side 800 --device cuda --json step.json
    python benchmarks/train_step.py --model glip_mini --short-side 96 --reps 1   # smoke

Configurations (``use_checkpoint`` pinned per configuration; feature cache hit or not):

* ``prompt ckpt``: prompt tuning with the official fusion checkpointing (recomputed in backward);
* ``prompt``: checkpointing off (what ``use_checkpoint: auto`` picks where the fusion fits);
* ``prompt cached``: off, and Swin + FPN taken from the feature cache (every visit of a training
  view after its first);
* ``full ckpt`` (official) / ``full``: full fine-tuning with / without checkpointing;
* ``linear`` (official probe) and ``linear cached`` (``mode=linear_cached``, a cache hit: the step is
  the prediction layers, the loss and AdamW);
* ``fusion_prompt`` and ``context_prompt`` (SDPT's fusion tokens, CoOp's context: their YAML
  defaults), each with (``ckpt``) and without fusion checkpointing, in the full step's group.

Everything runs the job's own code on real tensors on ``--device``: ``GLIPAdaptation`` built by
``benchmarks.odinw.measure.build_module`` (seeded random weights, the mode's policy and AdamW),
adapt's training transform and collate on a synthetic image of 800 x 1333. A step is what the
job's Trainer runs: ``on_train_batch_start``, ``training_step``, backward, gradient clipping at 1.0,
AdamW step. A cached configuration first takes one warm-up step (a miss, which fills the cache; the
others only with ``--warmup-all``), then every configuration one counted step (which also creates
the AdamW state), then ``--reps`` timed steps, the configurations alternating within each
repetition.

* FLOPs: ``adapt.flops.count_flops`` on the counted step (forward, loss, backward; AdamW is
  element-wise and not counted).
* Peak memory, device-independent (a model of the peak, public mechanisms only): parameters and
  buffers + gradients of the trainable set + the AdamW state (``optimizer.state``) + the cached
  features the step reads + the batch + what autograd saves for backward, the distinct storages
  seen by ``torch.autograd.graph.saved_tensors_hooks`` during the forward (parameters and buffers
  excluded: already counted). Checkpointed fusion layers hide their recomputation from these hooks
  (``torch.utils.checkpoint`` installs its own), so a ``ckpt`` configuration adds one fusion layer's
  saved tensors, i.e. (saved without checkpointing - saved with) / number of fusion layers: in
  backward, one checkpointed layer is recomputed at a time. No allocator caching, fragmentation or
  workspaces. On CUDA, ``torch.cuda.max_memory_allocated`` over the counted step is reported too.
* Time: medians of the interleaved repetitions and their ratios; the machine line
  (``adapt.runs.results.machine_info``) and the load average are printed with them.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable, as `python -m` does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from adapt.atomic import write_json
from adapt.flops import count_flops
from adapt.markdown import md_table
from adapt.runs.results import machine_info
from benchmarks.odinw.measure import SyntheticImages, build_module, quiet_lightning


@dataclass(frozen=True)
class Config:
    name: str
    mode: str  # conf/mode yaml
    checkpoint: bool
    cached: bool  # a feature cache hit (backbone, or the tower for linear_cached)


CONFIGS = (
    Config("prompt ckpt", "prompt", True, False),
    Config("prompt", "prompt", False, False),
    Config("prompt cached", "prompt", False, True),
    Config("full ckpt", "full", True, False),
    Config("full", "full", False, False),
    Config("linear", "linear", False, False),
    Config("linear cached", "linear_cached", False, True),
    # The methods the field compares (adapt.modes: fusion_prompt, context_prompt), against the same full step.
    Config("fusion_prompt ckpt", "fusion_prompt", True, False),
    Config("fusion_prompt", "fusion_prompt", False, False),
    Config("context_prompt ckpt", "context_prompt", True, False),
    Config("context_prompt", "context_prompt", False, False),
)
# Timed together (interleaved); the groups run one after the other, so that few models are in
# memory at a time. Ratios of time are taken within a group, so the methods share the full step's.
GROUPS = (
    (
        "prompt ckpt",
        "prompt",
        "prompt cached",
        "full ckpt",
        "full",
        "fusion_prompt ckpt",
        "fusion_prompt",
        "context_prompt ckpt",
        "context_prompt",
    ),
    ("linear", "linear cached"),
)
REFERENCE = "full ckpt"  # the official full fine-tuning step
CACHE_BYTES = 2**40  # no eviction within the benchmark


def _set_checkpointing(module: Any, on: bool) -> int:
    """Pin every fusion layer's ``use_checkpoint``; returns the number of fusion layers."""
    from adapt.model.fusion import VLFuse

    fuses = [m for m in module.model.modules() if isinstance(m, VLFuse)]
    for fuse in fuses:
        fuse.checkpoint_policy = fuse.use_checkpoint = on
    return len(fuses)


def _module(model: str, mode: str, task: str, device: str, checkpoint: bool) -> Any:
    """``build_module``: every mode, ``linear_cached`` included, composed as the job composes it."""
    return build_module(model, mode, task, device, checkpoint)


def _batch(module: Any, batch: int, short_side: int, hw: tuple[int, int], device: str) -> dict[str, Any]:
    from lightning.fabric.utilities.apply_func import move_data_to_device

    from adapt.data import transforms_from_config
    from adapt.train.datamodule import GLIPCollate

    # No flip: the same view at every visit, whatever the RNG (the cache keys on it).
    transform = transforms_from_config(
        {"min_size_train": [short_side], "max_size_train": 1333, "flip_prob": 0.0}, True
    )
    data = SyntheticImages(batch, hw, len(module.prompt.class_names), lambda i: transform)
    collated = GLIPCollate(module.prompt, module.model.cfg.input)([data[i] for i in range(batch)])
    return move_data_to_device(collated, torch.device(device))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _nbytes(tensors: Any) -> int:
    """Bytes of the distinct storages among ``tensors``."""
    seen: dict[int, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            s = t.untyped_storage()
            seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


class Runner:
    """One configuration's module, batch and optimiser, and its step (as the job's Trainer runs it)."""

    def __init__(self, config: Config, module: Any, batch: dict[str, Any], device: str) -> None:
        self.config, self.module, self.batch, self.device = config, module, batch, device
        if not hasattr(module, "_bench_optimizer"):
            module._bench_optimizer = module.configure_optimizers()
        self.optimizer = module._bench_optimizer

    def _prepare(self) -> None:
        self.layers = _set_checkpointing(self.module, self.config.checkpoint)
        self.module.feature_cache.max_bytes = CACHE_BYTES if self.config.cached else 0

    def _forward_backward(self) -> None:
        self.module.on_train_batch_start(self.batch, 0)
        loss = self.module.training_step(self.batch, 0)
        if loss is None:
            raise RuntimeError("the synthetic batch was skipped (no boxes): cannot time a step")
        loss.backward()

    def _update(self) -> None:
        params = [p for p in self.module.model.parameters() if p.requires_grad]
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> float:
        """Seconds of one full step."""
        self._prepare()
        _sync(self.device)
        start = time.perf_counter()
        self._forward_backward()
        self._update()
        _sync(self.device)
        return time.perf_counter() - start

    def count(self) -> dict[str, Any]:
        """FLOPs and the memory model of one step (see the module docstring)."""
        self._prepare()
        model = self.module.model
        static = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
        saved: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            if t.device.type != "meta":
                s = t.untyped_storage()
                if s.data_ptr() not in static:
                    saved[s.data_ptr()] = s.nbytes()
            return t

        def forward_backward() -> None:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                self.module.on_train_batch_start(self.batch, 0)
                loss = self.module.training_step(self.batch, 0)
            assert loss is not None
            loss.backward()

        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        flops = count_flops(forward_backward)
        trainable = [p for p in model.parameters() if p.requires_grad]
        grads = _nbytes(p.grad for p in trainable if p.grad is not None)
        self._update()
        _sync(self.device)
        out: dict[str, Any] = {
            "flops": flops.total,
            "trainable_params": sum(p.numel() for p in trainable),
            "params_buffers_bytes": _nbytes([*model.parameters(), *model.buffers()]),
            "grad_bytes": grads,
            "optimizer_state_bytes": _nbytes(
                v for state in self.optimizer.state.values() for v in state.values()
            ),
            "cache_bytes": self.module.feature_cache.bytes if self.config.cached else 0,
            "batch_bytes": _nbytes([self.batch["images"]]),
            "saved_bytes": sum(saved.values()),
            "fusion_layers": self.layers,
        }
        if self.device.startswith("cuda"):
            out["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated()
        return out


# The memory model's parts, in the order the report prints them.
MEMORY_PARTS = (
    "params_buffers_bytes",
    "grad_bytes",
    "optimizer_state_bytes",
    "cache_bytes",
    "batch_bytes",
    "saved_bytes",
)


def peak_bytes(counts: dict[str, dict[str, Any]], name: str) -> int:
    """The memory model's peak of ``name``, with one recomputed layer for a checkpointed one."""
    c = counts[name]
    peak = sum(c[k] for k in MEMORY_PARTS)
    config = next(cfg for cfg in CONFIGS if cfg.name == name)
    if config.checkpoint:
        twin = counts.get(name.removesuffix(" ckpt"))
        if twin is None:
            raise ValueError(f"{name!r} needs {name.removesuffix(' ckpt')!r} for its recomputation")
        peak += max(0, twin["saved_bytes"] - c["saved_bytes"]) // max(1, c["fusion_layers"])
    return peak


def run_group(names: Sequence[str], args: argparse.Namespace, hw: tuple[int, int]) -> dict[str, Any]:
    """Warm-up, counted step, then ``args.reps`` interleaved timed steps of the configurations ``names``."""
    modules: dict[str, Any] = {}
    runners: dict[str, Runner] = {}
    for name in names:
        config = next(c for c in CONFIGS if c.name == name)
        if config.mode not in modules:
            print(f"[train_step] building {args.model} for mode {config.mode}", file=sys.stderr, flush=True)
            torch.manual_seed(0)
            module = _module(args.model, config.mode, args.task, args.device, config.checkpoint)
            module.train()
            # A run encodes its fixed prompt once (frozen BERT) and reuses it at every step: encode it
            # now, so that every configuration counts the same steady-state step whichever ran first
            # (a first step also counts BERT's pass over the prompt, 45.9 GFLOP for GLIP-T).
            with torch.no_grad():
                module.text_features(1)
            modules[config.mode] = module
        module = modules[config.mode]
        runners[name] = Runner(
            config, module, _batch(module, args.batch, args.short_side, hw, args.device), args.device
        )
    out: dict[str, Any] = {"warmup_s": {}, "counts": {}, "times_s": {n: [] for n in names}}
    for name, runner in runners.items():
        # A cached configuration's warm-up fills the cache; for the others the counted step is the
        # warm-up (it creates the AdamW state), so that a GLIP-T run fits a CPU session.
        if runner.config.cached or args.warmup_all:
            out["warmup_s"][name] = runner.step()
            _log(f"{name}: warm-up {out['warmup_s'][name]:.2f} s")
    for name, runner in runners.items():
        out["counts"][name] = runner.count()
        _log(f"{name}: {out['counts'][name]['flops'] / 1e9:.1f} GFLOP")
    for rep in range(args.reps):
        for name, runner in runners.items():
            out["times_s"][name].append(runner.step())
            _log(f"rep {rep}: {name}: {out['times_s'][name][-1]:.2f} s")
    out["median_s"] = {n: statistics.median(v) for n, v in out["times_s"].items()}
    out["padded_hw"] = list(next(iter(runners.values())).batch["images"].shape[-2:])
    out["cache"] = {n: r.module.feature_cache.stats() for n, r in runners.items() if r.config.cached}
    del runners, modules
    gc.collect()
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


def _log(message: str) -> None:
    print(f"[train_step] {message}", file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--model", default="glip_t", help="conf/model name (glip_mini for a smoke run)")
    parser.add_argument("--task", default="odinw/pascalvoc", help="conf/task whose prompt the model reads")
    parser.add_argument("--batch", type=int, default=1, help="images per step")
    parser.add_argument("--short-side", type=int, default=320, help="training short side (long side <= 1333)")
    parser.add_argument("--image-hw", nargs=2, type=int, default=[800, 1333], metavar=("H", "W"))
    parser.add_argument("--reps", type=int, default=2, help="timed repetitions after warm-up and count")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--configs", nargs="+", choices=[c.name for c in CONFIGS], help="a subset")
    parser.add_argument(
        "--warmup-all", action="store_true", help="an untimed warm-up step for every configuration"
    )
    parser.add_argument("--json", help="also write the report as JSON here (atomically)")
    args = parser.parse_args(argv)
    for flag in ("batch", "short_side", "reps"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet_lightning()
    hw = (args.image_hw[0], args.image_hw[1])
    report: dict[str, Any] = {
        "machine": machine_info(args.device),
        "load_average": list(os.getloadavg()),
        "settings": {
            **vars(args),
            "command": " ".join(
                ["python benchmarks/train_step.py", *(sys.argv[1:] if argv is None else argv)]
            ),
        },
        "groups": [],
    }
    wanted = set(args.configs or [c.name for c in CONFIGS])
    # A checkpointed configuration's memory needs its unchecked twin (see peak_bytes).
    wanted |= {n.removesuffix(" ckpt") for n in wanted if n.endswith(" ckpt")}
    for group in GROUPS:
        names = [n for n in group if n in wanted]
        if names:
            report["groups"].append(run_group(names, args, hw))
            _log("group done: " + json.dumps({n: g for n, g in report["groups"][-1]["counts"].items()}))
            _log("medians: " + json.dumps(report["groups"][-1]["median_s"]))
    report["load_average_end"] = list(os.getloadavg())
    counts = {n: c for g in report["groups"] for n, c in g["counts"].items()}
    report["peak_bytes"] = {n: peak_bytes(counts, n) for n in counts}
    print(render(report), end="")
    if args.json:
        write_json(report, args.json)
    return 0


def _ratio(a: float | None, b: float | None) -> str:
    return "–" if a is None or not b else f"{a / b:.2f}"


def render(report: dict[str, Any]) -> str:
    s = report["settings"]
    groups = report["groups"]
    counts = {n: c for g in groups for n, c in g["counts"].items()}
    peaks = report["peak_bytes"]
    padded = groups[0]["padded_hw"] if groups else None
    load = ", ".join(f"{x:.1f}" for x in report["load_average"])
    load_end = ", ".join(f"{x:.1f}" for x in report["load_average_end"])
    lines = [
        f"machine: {report['machine']}",
        f"load average (1, 5, 15 min): {load} at the start, {load_end} at the end",
        f"{s['model']}, batch {s['batch']}, short side {s['short_side']} (padded {padded}), {s['device']}, "
        f"time: median of {s['reps']} interleaved repetitions",
        "",
    ]
    header = ["configuration", "GFLOP / step", f"x {REFERENCE}", "peak GiB (model)", f"x {REFERENCE}"]
    header += ["s / step", f"x {REFERENCE}"]
    table = []
    ref_flops = counts.get(REFERENCE, {}).get("flops")
    ref_peak = peaks.get(REFERENCE)
    for g in groups:
        med = g["median_s"]
        ref_time = med.get(REFERENCE)
        for name, c in g["counts"].items():
            table.append(
                [
                    name,
                    f"{c['flops'] / 1e9:.1f}",
                    _ratio(c["flops"], ref_flops),
                    f"{peaks[name] / 2**30:.3f}",
                    _ratio(peaks[name], ref_peak),
                    f"{med[name]:.2f}",
                    _ratio(med[name], ref_time),
                ]
            )
    lines += md_table(header, table)
    if any("cuda_max_allocated_bytes" in c for c in counts.values()):
        cuda = [[n, f"{c['cuda_max_allocated_bytes'] / 2**30:.3f}"] for n, c in counts.items()]
        lines += ["", *md_table(["configuration", "CUDA max allocated GiB"], cuda)]
    lines += [
        "",
        "Memory model parts (MiB): params+buffers / grads / AdamW state / cache / batch / saved for backward",
    ]
    for name, c in counts.items():
        lines.append(f"  {name}: " + " / ".join(f"{c[k] / 2**20:.0f}" for k in MEMORY_PARTS))
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
