"""benchmarks/train_step.py end to end on glip_mini (prompt tuning, checkpointing on and off).

The benchmark's counts must show what checkpointing trades: the recomputed fusion forward costs
FLOPs and saves memory kept for backward. Times are printed, never asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # the benchmark script end to end; run with -m slow
def test_train_step_smoke(tmp_path: Path) -> None:
    out = tmp_path / "step.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, str(ROOT / "benchmarks" / "train_step.py"), "--model", "glip_mini"]
    command += ["--short-side", "64", "--reps", "1", "--configs", "prompt ckpt", "--json", str(out)]
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "| prompt ckpt |" in run.stdout and "machine:" in run.stdout
    report = json.loads(out.read_text(encoding="utf-8"))
    counts = report["groups"][0]["counts"]
    assert set(counts) == {"prompt ckpt", "prompt"}  # the unchecked twin is added for the memory model
    on, off = counts["prompt ckpt"], counts["prompt"]
    assert on["flops"] > off["flops"] > 0
    assert 0 < on["saved_bytes"] < off["saved_bytes"]
    assert on["trainable_params"] == off["trainable_params"] > 0
    assert on["fusion_layers"] > 0
    assert 0 < report["peak_bytes"]["prompt ckpt"] < report["peak_bytes"]["prompt"]
