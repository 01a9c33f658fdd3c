"""Peak RAM while loading a release-like GLIP checkpoint, with and without ``mmap``.

    python benchmarks/checkpoint_memory.py                    # glip_t, file in /tmp, deleted after
    python benchmarks/checkpoint_memory.py --optimizer-buffers 2     # with Adam-like optimizer state
    python benchmarks/checkpoint_memory.py --model glip_l --file /data/tmp/glip_l_like.pth

The file is built from the model's random (seeded) weights in the official layout of a release
checkpoint: ``{"model": {"module." + official key: tensor}, "optimizer": ..., "scheduler": ...,
"iteration": numpy.int64}``. By default the optimizer entry holds only its param groups, so the
file is about the size of the weights; ``--optimizer-buffers 2`` adds Adam-like moments, the
layout that makes the released GLIP-T file 3.71 GB. Each mode then runs in a fresh process:
build the model (the load target; its RSS is the baseline), then ``adapt.model.load_checkpoint``,
which reads with ``torch.load(weights_only=True, mmap=True)``; the second run forces
``mmap=False`` for the comparison. A thread samples ``/proc/self/status`` every 2 ms: ``VmRSS``
(all resident memory, including the file's pages while they are mapped) and ``RssAnon`` (memory
the process owns; the mapped file's pages are page cache, which the kernel can drop). Linux only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from adapt.markdown import md_table

MIB = 1 << 20


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class PeakSampler(threading.Thread):
    """Peak VmRSS and RssAnon of this process while it runs (sampled: a shorter spike can hide)."""

    def __init__(self, period: float = 0.002) -> None:
        super().__init__(daemon=True)
        self.period = period
        self.peak_rss = self.peak_anon = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.peak_rss = max(self.peak_rss, status_kib("VmRSS"))
            self.peak_anon = max(self.peak_anon, status_kib("RssAnon"))
            time.sleep(self.period)

    def stop(self) -> None:
        self._done.set()
        self.join()


def make(model_name: str, path: Path, optimizer_buffers: int = 0) -> int:
    """Write the release-like file (with ``optimizer_buffers`` weight-sized buffers per parameter,
    as Adam's two moments make a real release file about three times the weights); returns its size."""
    import numpy as np
    import torch

    from adapt.detector import model_config
    from adapt.model import GLIPConfig, build_glip
    from adapt.model.checkpoint import official_state_dict

    model = build_glip(GLIPConfig.from_dict(model_config(model_name)["arch"]), seed=0)
    sd = {f"module.{k}": v for k, v in official_state_dict(model).items()}
    del model
    state = {
        i: {f"buffer{b}": torch.randn(v.shape) for b in range(optimizer_buffers)}
        for i, v in enumerate(sd.values())
        if v.is_floating_point() and optimizer_buffers
    }
    group = {"lr": np.float64(1e-4), "params": list(range(len(sd)))}
    release = {
        "model": sd,
        "optimizer": {"state": state, "param_groups": [group]},
        "scheduler": {"milestones": [67000, 80000], "gamma": 0.1, "last_epoch": np.int64(90000)},
        "iteration": np.int64(90000),
    }
    torch.save(release, path)
    return path.stat().st_size


def load(model_name: str, path: Path, mmap: bool) -> dict:
    """Build the model, then load the file into it, in this process; returns the memory figures."""
    import torch

    from adapt.detector import model_config
    from adapt.model import GLIPConfig, build_glip, load_checkpoint

    if not mmap:
        real_load = torch.load

        def no_mmap(*args, **kwargs):
            kwargs["mmap"] = False
            return real_load(*args, **kwargs)

        torch.load = no_mmap
    model = build_glip(GLIPConfig.from_dict(model_config(model_name)["arch"]), seed=1)
    base_rss, base_anon = status_kib("VmRSS"), status_kib("RssAnon")
    sampler = PeakSampler()
    sampler.start()
    start = time.perf_counter()
    report = load_checkpoint(model, path, strict=True)
    seconds = time.perf_counter() - start
    sampler.stop()
    assert report.ok, str(report)
    return {
        "mmap": mmap,
        "seconds": round(seconds, 2),
        "baseline_rss_mib": round(base_rss / 1024),
        "peak_rss_mib": round(max(sampler.peak_rss, base_rss) / 1024),
        "baseline_anon_mib": round(base_anon / 1024),
        "peak_anon_mib": round(max(sampler.peak_anon, base_anon) / 1024),
        "vm_hwm_mib": round(status_kib("VmHWM") / 1024),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="glip_t")
    parser.add_argument(
        "--file", type=Path, help="the file to write, or to reuse if it exists (default: /tmp, deleted after)"
    )
    parser.add_argument(
        "--optimizer-buffers",
        type=int,
        default=0,
        help="weight-sized optimizer buffers per parameter (Adam: 2)",
    )
    parser.add_argument("--child", choices=["mmap", "no-mmap"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(load(args.model, args.file, args.child == "mmap")))
        return
    path = args.file or Path("/tmp") / f"adapt_{args.model}_release_like_{os.getpid()}.pth"
    try:
        size = (
            path.stat().st_size
            if args.file is not None and path.is_file()
            else make(args.model, path, args.optimizer_buffers)
        )
        rows = []
        for mode in ("mmap", "no-mmap"):
            child = [sys.executable, __file__, "--model", args.model, "--file", str(path), "--child", mode]
            done = subprocess.run(child, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"{mode} run failed:\n{done.stderr}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    finally:
        if args.file is None:
            path.unlink(missing_ok=True)
    from adapt.runs.results import machine_info

    summary = {
        "model": args.model,
        "optimizer_buffers": args.optimizer_buffers,
        "file_mib": round(size / MIB),
    }
    print(json.dumps({**summary, "machine": machine_info()}))
    header = [
        "torch.load",
        "load s",
        "RSS before -> peak (MiB)",
        "RssAnon before -> peak (MiB)",
        "VmHWM (MiB)",
    ]
    table = [
        [
            f"mmap={r['mmap']}",
            r["seconds"],
            f"{r['baseline_rss_mib']} -> {r['peak_rss_mib']}",
            f"{r['baseline_anon_mib']} -> {r['peak_anon_mib']}",
            r["vm_hwm_mib"],
        ]
        for r in rows
    ]
    print("\n".join(md_table(header, table)))


if __name__ == "__main__":
    main()
