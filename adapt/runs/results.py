"""What a training job records in ``results.json``, the one record of a run.

Schema in docs/DESIGN.md. The job merges its fields into the file (``adapt.runs.record.update_record``,
atomic) after every evaluation with status "running", so a run killed mid-way still shows its
history, and once more at the end with status "complete". Merging keeps what the sweep wrote when
the job started (host, pid, start time, SLURM ids), and a resumed run's validation history and time
so far until its next evaluation replaces them. Peak memory is the CUDA allocator's peak on GPU and
the process's maximum resident set size on CPU.
"""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig

from adapt.grid import normalize_shots
from adapt.runs.record import RESULTS_FILE, composed_config, update_record
from adapt.runs.sweep import STALE_AT_START


def is_global_zero() -> bool:
    """Whether this process is rank 0 (always, without DDP): the one that writes files.

    Lightning sets the rank from the launcher's environment at import (``LOCAL_RANK``, ``RANK``,
    ``SLURM_PROCID``) and again once the trainer has joined the process group, so this is right
    before a Trainer exists too.
    """
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def peak_memory_mb(device: torch.device | str | None = None) -> float:
    """Peak memory of this process in MiB (CUDA allocator on GPU, max RSS on CPU)."""
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return round(rss / 2**20 if sys.platform == "darwin" else rss / 2**10, 1)


def machine_info(device: torch.device | str | None = None) -> dict[str, Any]:
    """Where a run or a benchmark ran: device, CPU model, threads and library versions.

    Timings mean little without the machine; results.json and the benchmark scripts use this
    one description so that a sweep's wall times and a benchmark's figures can be compared.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    cpu = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True, timeout=10).stdout
        cpu = next(
            line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")
        )
    except (OSError, subprocess.SubprocessError, StopIteration):
        pass
    on_cuda = device.type == "cuda" and torch.cuda.is_available()
    info: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if on_cuda else "cpu",
        "cpu": cpu,
        "cpu_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if on_cuda:
        info["cuda"] = torch.version.cuda
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    info["lightning"] = L.__version__
    return info


class RunRecord:
    """A training job's fields of ``<run_dir>/results.json``, merged into the file on every write.

    ``data`` holds what this job has set; fields it has not set yet (a resumed run's earlier
    history, the sweep's start record) stay as they are on disk.
    """

    def __init__(self, run_dir: str | os.PathLike[str], cfg: DictConfig | Mapping[str, Any]) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / RESULTS_FILE
        self.data: dict[str, Any] = {
            "status": "running",
            "task": _get(cfg, "task.id") or _get(cfg, "task.name"),
            "model": _get(cfg, "model.name"),
            "mode": _get(cfg, "mode.name"),
            "shots": normalize_shots(_get(cfg, "shots")),
            "seed": _get(cfg, "seed"),
            "config": composed_config(cfg),
        }
        self._started = False

    def update(self, **fields: Any) -> None:
        self.data.update(fields)

    def write(self, status: str | None = None) -> Path:
        if status is not None:
            self.data["status"] = status
        if is_global_zero():  # one writer under DDP; every rank holds the same record
            # The first write starts this attempt: how an earlier one ended no longer holds.
            update_record(self.run_dir, self.data, drop=() if self._started else STALE_AT_START)
        self._started = True
        return self.path


class RunClock(L.Callback):
    """A run's wall time, carried through resume checkpoints.

    A sweep job requeued after a SLURM time-out continues from ``last.ckpt``; its
    ``wall_time_s`` must include the attempts that got it there, or a sweep's summed time (the
    cost figure users plan clusters with) undercounts. Work after the last checkpoint is redone,
    so it is not counted twice: the clock resumes from the checkpoint's reading.
    """

    def __init__(self) -> None:
        self.start = time.time()
        self.cpu_start = time.process_time()
        self.before_s = 0.0  # time of earlier attempts, as of the checkpoint this one resumed
        self.cpu_before_s = 0.0
        self.resumed = False

    def elapsed_s(self) -> float:
        return round(self.before_s + time.time() - self.start, 2)

    def cpu_s(self) -> float:
        """CPU seconds of this process's threads (DataLoader workers not counted): on a machine
        shared with other jobs the wall time measures the load, this measures the run."""
        return round(self.cpu_before_s + time.process_time() - self.cpu_start, 2)

    def state_dict(self) -> dict[str, Any]:
        return {"elapsed_s": self.elapsed_s(), "cpu_s": self.cpu_s()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.before_s = float(state_dict["elapsed_s"])
        self.cpu_before_s = float(state_dict.get("cpu_s", 0.0))  # absent in older checkpoints
        self.resumed = True


def test_fields(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The ``test`` block of results.json from an ``adapt.evaluate`` result."""
    return {
        "ap": metrics.get("ap"),
        "ap50": metrics.get("ap50"),
        "ap75": metrics.get("ap75"),
        "ap_small": metrics.get("ap_small"),
        "ap_medium": metrics.get("ap_medium"),
        "ap_large": metrics.get("ap_large"),
        "per_category": dict(metrics.get("per_category") or {}),
    }


def _get(cfg: DictConfig | Mapping[str, Any], key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        if node is None:
            return None
        try:
            node = node.get(part) if isinstance(node, Mapping | DictConfig) else None
        except Exception:  # unresolvable interpolation
            return None
    return node
