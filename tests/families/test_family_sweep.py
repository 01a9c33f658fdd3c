"""`python -m adapt.run -m +sweep=odinw13 model=<family model> sweep.dry_run=true` lists the protocol's
jobs for every family model config (nothing is downloaded: a dry run builds no model), and the report
of the planned sweep renders, with no paper columns (no published ODinW numbers for these models)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from adapt.report import build_report
from adapt.report.cli import write_report
from adapt.report.paper import load_paper

ROOT = Path(__file__).resolve().parents[2]
# One subprocess each (~5 s of CPU): the example and the other family run by default.
MODELS = [
    pytest.param("grounding_dino_t", marks=pytest.mark.slow),
    pytest.param("grounding_dino_b", marks=pytest.mark.slow),
    "mm_grounding_dino_t",
    pytest.param("llmdet_t", marks=pytest.mark.slow),
    "owlv2_b16",
]


@pytest.mark.parametrize("model", MODELS)
def test_dry_run_sweep_lists_the_protocol_jobs_and_the_report_renders(tmp_path: Path, model: str):
    # odinw13's grid narrowed to one task, two modes and two shots: 1 x 2 x 2 x 3 = 12 points, of
    # which 1 zero-shot + 1 prompt x 1 shot x 3 seeds = 4 run.
    grid = ["task=odinw/aquarium", "mode=zero,prompt", "shots=0,1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "adapt.run",
            "-m",
            "+sweep=odinw13",
            f"model={model}",
            *grid,
            "sweep.dry_run=true",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    launches = [
        line.split("would launch: ", 1)[1] for line in done.stderr.splitlines() if "would launch" in line
    ]
    launches += [
        line.split("would launch: ", 1)[1] for line in done.stdout.splitlines() if "would launch" in line
    ]
    assert len(launches) == 4 and all(f"model={model}" in job for job in launches)
    assert sum("mode=zero" in job and "shots=0" in job and "seed=3" in job for job in launches) == 1
    sweep_dir = tmp_path / "multirun" / "odinw13"
    report = build_report(sweep_dir, paper=load_paper())
    assert [j.status for j in report.jobs] == ["missing"] * 4
    [model_report] = report.models
    assert model_report.model == model and model_report.paper_model is None
    written = write_report(report, tmp_path / "report", plots=False)
    text = written["report.md"].read_text()
    assert f"`{model}`" in text and "Paper reference: none for this model." in text
