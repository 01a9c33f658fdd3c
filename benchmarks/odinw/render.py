"""The cost report as Markdown: machine, measured quantities, FLOPs, protocol counts, sweeps, hours.

Takes the plain-data report of ``cost.run`` (the same dict that ``--json`` writes), one function
per section; tables go through ``adapt.markdown.md_table``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from typing import Any

from adapt.grid import ALL_SHOTS, Shots, mode_sort_key, normalize_shots
from adapt.markdown import md_table

REFERENCE_MODE = "full"  # the official full fine-tuning step, what the ratios divide by


def num(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def flops(value: float | None) -> str:
    if value is None:
        return "–"
    for unit, size in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if abs(value) >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value:.3g} FLOP"


def _shots_label(shots: Shots) -> str:
    return "zero-shot" if shots == 0 else ("all" if shots == ALL_SHOTS else f"{shots}-shot")


def _cell(entry: Mapping[str, Any] | None, key: str, digits: int = 3) -> str:
    if not entry:
        return "not measured"
    if "error" in entry:
        return "failed: " + entry["error"].split(":")[0]
    value = entry.get(key)
    if value is None:
        return "not measured"
    return f"{value:,.0f}" if digits == 0 else num(value, digits)


def _bound(count: float | None, peak_tflops: float) -> str:
    return "–" if count is None else num(count / (peak_tflops * 1e12))


def _modes(report: Mapping[str, Any]) -> list[str]:
    return sorted({mode for r in report["models"].values() for mode in r["train"]}, key=mode_sort_key)


def _eval_modes(report: Mapping[str, Any]) -> list[str]:
    modes = {mode for r in report["models"].values() for mode in r.get("eval_modes") or {}}
    return sorted(modes, key=mode_sort_key)


def _ratio(entry: Mapping[str, Any] | None, reference: Mapping[str, Any] | None, key: str) -> str:
    a, b = (entry or {}).get(key), (reference or {}).get(key)
    return "–" if a is None or not b else f"{a / b:.2f}"


def _relative(report: Mapping[str, Any]) -> list[str]:
    """Each mode's training step against full fine-tuning's (FLOPs, time, peak memory on CUDA), and
    each evaluation-only mode's image against zero-shot's."""
    rows = []
    for name, r in report["models"].items():
        full = r["train"].get(REFERENCE_MODE)
        for mode in _modes(report):
            entry = r["train"].get(mode)
            if full and entry and mode != REFERENCE_MODE:
                rows.append(
                    [name, f"training step, `{mode}` / `{REFERENCE_MODE}`"]
                    + [_ratio(entry, full, k) for k in ("flops_per_step", "t_step", "peak_memory_mb")]
                )
        for mode, entry in (r.get("eval_modes") or {}).items():
            rows.append(
                [name, f"evaluated image, `{mode}` / zero-shot"]
                + [_ratio(entry, r["eval"], k) for k in ("flops_per_image", "t_img", "peak_memory_mb")]
            )
    if not rows:
        return []
    header = ["model", "ratio", "FLOPs", "time", "peak memory (CUDA)"]
    return ["## Relative cost", "", *md_table(header, rows), ""]


def _header(report: Mapping[str, Any]) -> list[str]:
    s, m = report["settings"], report["machine"]
    where = m["device"] if s["device"] != "cpu" else f"CPU only ({m['cpu_threads']} threads)"
    lines = [
        "# ODinW-13 sweep cost",
        "",
        f"Machine: {where}; CPU {m['cpu']}; torch {m['torch']}"
        + (f", CUDA {m['cuda']}" if m.get("cuda") else "")
        + f", torchvision {m.get('torchvision', '?')}, lightning {m.get('lightning', '?')}.",
        f"Command: `{s.get('command') or 'python benchmarks/odinw/cost.py'}`.",
        "",
        f"Training: batch {s['batch']}, synthetic {s['image_hw'][0]} x {s['image_hw'][1]} images "
        f"resized to short side {', '.join(map(str, s['train_scales']))} (long side capped at "
        f"{s['max_size_train']}). Evaluation: batch {s['eval_batch']} at {s['test_hw'][0]} x "
        f"{s['test_hw'][1]}. Random, seeded weights.",
    ]
    if s["timing"]:
        lines[-1] += (
            f" Precision {s['precision']}; {s['warmup']} warm-up + the median of {s['reps']} timed "
            "batches per configuration."
        )
    if list(s["train_scales"]) != list(s["recipe_scales"]):
        lines.append(
            f"Only some of the recipe's scales ({', '.join(map(str, s['recipe_scales']))}) were used: "
            "t_step and FLOPs per step average the used ones (the largest alone overestimates)."
        )
    return [*lines, ""]


def _measured(report: Mapping[str, Any]) -> list[str]:
    s, models, by_name = report["settings"], list(report["models"]), report["models"]
    rows = []
    for mode in _modes(report):
        rows.append(
            [f"`t_step({mode})`", f"s per training step, batch {s['batch']}, {s['precision']}"]
            + [_cell(by_name[n]["train"].get(mode), "t_step") for n in models]
        )
    rows.append(
        ["`t_img`", f"s per evaluated image, batch {s['eval_batch']}"]
        + [_cell(by_name[n]["eval"], "t_img") for n in models]
    )
    for mode in _eval_modes(report):
        rows.append(
            [f"`t_img({mode})`", f"s per evaluated image, batch {s['eval_batch']}"]
            + [_cell((by_name[n].get("eval_modes") or {}).get(mode), "t_img") for n in models]
        )
    if s["device"] != "cpu":
        for mode in _modes(report):
            rows.append(
                [f"peak memory ({mode})", "MiB, torch.cuda.max_memory_allocated"]
                + [_cell(by_name[n]["train"].get(mode), "peak_memory_mb", 0) for n in models]
            )
    lines = ["## Measured quantities", "", *md_table(["symbol", "meaning", *models], rows)]
    lines += ["", "Per training scale (median s per step; weight = share of batches padded to it):", ""]
    header = ["model", "mode"] + [
        f"{sc} ({w:.3f})" for sc, w in zip(s["train_scales"], s["scale_weights"], strict=True)
    ]
    per_scale = [
        [n, mode, *(num(v) for v in (r.get("t_step_per_scale") or [None] * len(s["train_scales"])))]
        for n in models
        for mode, r in by_name[n]["train"].items()
    ]
    return [*lines, *md_table(header, per_scale), ""]


def _flop_section(report: Mapping[str, Any]) -> list[str]:
    s, models, by_name = report["settings"], list(report["models"]), report["models"]
    peak = s.get("peak_tflops")
    lines = [
        "## FLOPs (device-independent; lower bounds)",
        "",
        "Counted by `adapt.flops.count_flops` (torch's `FlopCounterMode`: matmul, convolution and "
        "attention kernels, forward and backward, including the recomputation of gradient-checkpointed "
        "layers; the deformable convs as their GEMMs: adapt's own on the CPU, torchvision's elsewhere) "
        "on the real step on "
        f"{s['device']}. Not counted: element-wise ops, normalisation, softmax, the loss's assignment, "
        "post-processing and NMS, the optimiser update. So every figure is a lower bound. Weighted over "
        "the training scales like t_step.",
        "",
    ]
    rows = [
        [f"per training step ({mode}), batch {s['batch']}"]
        + [flops((by_name[n]["train"].get(mode) or {}).get("flops_per_step")) for n in models]
        for mode in _modes(report)
    ]
    rows.append(
        [f"per evaluated image ({s['test_hw'][0]} x {s['test_hw'][1]})"]
        + [flops((by_name[n]["eval"] or {}).get("flops_per_image")) for n in models]
    )
    for mode in _eval_modes(report):
        rows.append(
            [f"per evaluated image ({mode})"]
            + [
                flops(((by_name[n].get("eval_modes") or {}).get(mode) or {}).get("flops_per_image"))
                for n in models
            ]
        )
    if peak:
        rows += [
            [f"lower bound on t_step({mode}) at {peak:g} TFLOP/s, s"]
            + [_bound((by_name[n]["train"].get(mode) or {}).get("flops_per_step"), peak) for n in models]
            for mode in _modes(report)
        ]
        rows.append(
            [f"lower bound on t_img at {peak:g} TFLOP/s, s"]
            + [_bound((by_name[n]["eval"] or {}).get("flops_per_image"), peak) for n in models]
        )
    lines += md_table(["quantity", *models], rows)
    if peak:
        lines += [
            "",
            f"The bounds divide the counted FLOPs by a peak of {peak:g} TFLOP/s given on the command "
            "line (a datasheet figure, not a measurement; no real step reaches it).",
        ]
    return [*lines, ""]


def _protocol(report: Mapping[str, Any]) -> list[str]:
    p = report["protocol"]
    lines = [
        f"## Protocol counts ({len(p['tasks'])} tasks; dataset sizes from `odinw13_sizes.csv`)",
        "",
        f"{p['jobs']} runs per model ({', '.join(p['modes'])}). Few-shot training and val images are "
        "K x classes, an upper bound on what the sampler keeps. EgoHands and Vehicles validate on "
        "mini_val in zero-shot and full-data runs, so those val counts are upper bounds too.",
        "",
    ]
    rows = []
    for shots_key, c in p["period_counts"].items():
        shots = normalize_shots(shots_key)
        runs = p["runs_per_task"].get(shots_key, {})
        e = p["evaluation_bounds"].get(shots_key)
        rows.append(
            [
                _shots_label(shots),
                ", ".join(f"{mode} x{n}" for mode, n in runs.items()),
                f"{c['steps']:,}" if shots != 0 else "–",
                f"{c['val_images']:,}",
                f"{p['test_images']:,}",
                f"{e[0]}..{e[1]}" if shots != 0 else "1",
            ]
        )
    header = ["shots", "runs per task", "steps per period", "val images per evaluation"]
    header += ["test images per run", "E (protocol)"]
    return [*lines, *md_table(header, rows), ""]


def _sweep(sweep: Mapping[str, Any]) -> list[str]:
    lines = [f"## Sweep `{sweep['path']}` ({sweep['model'] or 'all models'})", ""]
    lines.append(
        "Runs: "
        + ", ".join(f"{k} {v}" for k, v in sorted(sweep["statuses"].items()))
        + f". Measured total wall time of the complete runs: {sweep['wall_time_s'] / 3600:.2f} h ("
        + ", ".join(f"{k} {v / 3600:.2f} h" for k, v in sweep["wall_by_mode"].items())
        + ")."
    )
    rows = [
        [
            _shots_label(normalize_shots(k)),
            str(len(v)),
            num(statistics.fmean(v)) if v else "–",
            f"{min(v)}..{max(v)}" if v else "–",
        ]
        for k, v in sweep["evaluations_by_shots"].items()
    ]
    lines += ["", *md_table(["shots", "complete runs", "mean E = len(val_history)", "range"], rows)]
    if sweep.get("t_job"):
        lines += [
            "",
            f"t_job (the zero-shot run on {sweep['t_job'][0]}, the smallest dataset): "
            f"{sweep['t_job'][1]:.1f} s.",
        ]
    return [*lines, ""]


def _hours(report: Mapping[str, Any]) -> list[str]:
    s, m = report["settings"], report["machine"]
    where = m["device"] if s["device"] != "cpu" else "this CPU"
    devices = s["devices"]
    rows = []
    for est in report["estimates"]:
        hours = est["hours"]
        rows.append(
            [
                est["model"],
                est["label"],
                f"{est['jobs']}",
                num(hours) + ("" if est["t_job_included"] or hours is None else f" + {est['jobs']} t_job"),
                *(num(est["wall_hours"].get(str(d))) if hours is not None else "–" for d in devices),
                num(est["flop_hours_at_peak"]) if est["flop_hours_at_peak"] is not None else "–",
            ]
        )
    peak = s.get("peak_tflops")
    header = ["model", "E", "runs", f"hours on {where}"]
    header += [f"wall-clock, {d} device{'s' if d > 1 else ''}" for d in devices]
    header.append(f"FLOP lower bound, hours at {peak:g} TFLOP/s" if peak else "FLOP lower bound")
    lines = ["## Device-hours of one sweep", "", *md_table(header, rows)]
    lines += [
        "",
        "hours = sum over runs of (steps x t_step(mode) + evaluated images x t_img + t_job). "
        "Wall-clock on n devices = max(hours / n, longest run) (perfect packing, so a lower bound). "
        "The FLOP bound is the sweep's counted FLOPs at the given peak, with no t_job.",
    ]
    noted = set()
    for est in report["estimates"]:
        if est["missing"] and est["model"] not in noted:
            noted.add(est["model"])
            lines.append(f"* {est['model']}: not measured: {', '.join(est['missing'])} (hours left out).")
    return lines


def render_markdown(report: Mapping[str, Any]) -> str:
    """The whole cost report (the dict ``cost.run`` returns) as Markdown."""
    s = report["settings"]
    lines = _header(report)
    if s["timing"]:
        lines += _measured(report)
    if s["flops"]:
        lines += _flop_section(report)
    lines += _relative(report)
    lines += _protocol(report)
    for sweep in report.get("sweeps") or []:
        lines += _sweep(sweep)
    lines += _hours(report)
    return "\n".join(lines) + "\n"
