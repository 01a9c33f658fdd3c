"""Stopping and resuming as users do: SIGTERM while DataLoader workers run, a torn last.ckpt.

The SIGTERM test is a real `python -m adapt.run` process with two workers, signalled as SLURM,
`timeout` or a shell stopping a job do: the whole process group at once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_helpers import TINY_INPUT, compose_job

from adapt.model import CheckpointError
from adapt.runs.job import run_job
from adapt.runs.resume import check_resume_file
from adapt.runs.signals import Interrupted, sigterm_raises

# A long run (no early stop) that only the signal ends; one-shot, two workers.
LONG_RUN = [
    "model=glip_mini",
    "trainer=debug",
    "logger=none",
    *TINY_INPUT,
    "shots=1",
    "recipe.stop_patience=1000",
    "trainer.max_steps=-1",
    "trainer.max_epochs=100",
]


def _children(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []


@pytest.mark.slow  # a real run with DataLoader workers, signalled; run with -m slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="watches DataLoader workers in /proc")
def test_sigterm_while_workers_run_ends_interrupted_and_resumable(tmp_path):
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "adapt.run", f"hydra.run.dir={run_dir}", *LONG_RUN]
    proc = subprocess.Popen(
        [*command, "data.num_workers=2"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, signalled as a whole below
    )
    try:
        deadline = time.monotonic() + 600
        while not (last.is_file() and len(_children(proc.pid)) >= 2):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the run never reached its second period with workers"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()

    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "DataLoader worker" not in err + out
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "interrupted" and results["resume_from"] == str(last)
    assert (
        f'interrupted by SIGTERM: {run_dir / "results.json"} says "interrupted"; run the same command '
        f"again to continue from {last} (the last completed evaluation period; resume=false starts "
        "over instead)"
    ) in out

    # A torn copy of this real checkpoint is refused; the checkpoint itself resumes.
    torn = tmp_path / "torn.ckpt"
    torn.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        check_resume_file(torn)
    epoch = torch.load(last, weights_only=True)["epoch"]  # periods completed: epoch + 1
    resumed = compose_job(*LONG_RUN[3:], "resume=true", f"trainer.max_epochs={epoch + 2}")
    run_job(resumed, run_dir=run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "complete" and results["resumed"]
    assert len(results["val_history"]) == epoch + 2 and results["test"]["ap"] is not None


def test_sigterm_outside_lightnings_loops_raises_at_once():
    previous = signal.getsignal(signal.SIGTERM)
    with sigterm_raises(), pytest.raises(Interrupted) as info:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler runs before this returns
    assert info.value.code == 143
    assert signal.getsignal(signal.SIGTERM) is previous  # the handler is put back


def _archive(path: Path) -> bytes:
    """A real torch archive like Lightning's last.ckpt (torch.save of a dict of tensors)."""
    torch.save({"epoch": 3, "state_dict": {"w": torch.arange(4096.0)}}, path)
    return path.read_bytes()


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda data: data[: len(data) // 2], "File is not a zip file"),
        (lambda data: b"", "File is not a zip file"),
        (
            lambda data: data[: len(data) // 2] + bytes(64) + data[len(data) // 2 + 64 :],
            "fails its CRC check",
        ),
    ],
    ids=["truncated", "empty", "zeroed-tensor-bytes"],
)
def test_a_damaged_last_ckpt_is_named_with_the_way_out(tmp_path, damage, problem):
    last = tmp_path / "last.ckpt"
    last.write_bytes(damage(_archive(last)))
    with pytest.raises(CheckpointError) as info:
        check_resume_file(last)
    assert str(info.value).startswith(f"{last} is truncated or corrupt (")
    assert problem in str(info.value)
    assert str(info.value).endswith(
        "so the run cannot resume from it: run again with resume=false to start over "
        "(it is then replaced), or delete it"
    )


def test_resume_from_a_truncated_last_ckpt_stops_before_training(tmp_path):
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    data = _archive(ckpt_dir / "last.ckpt")
    (ckpt_dir / "last.ckpt").write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match=r"last\.ckpt is truncated or corrupt"):
        run_job(compose_job("shots=1", "resume=true"), run_dir=tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "failed" and not results.get("val_history")  # nothing trained


def test_an_intact_last_ckpt_passes(tmp_path):
    _archive(tmp_path / "last.ckpt")
    check_resume_file(tmp_path / "last.ckpt")


def test_an_interruption_before_any_checkpoint_says_a_rerun_starts_afresh(tmp_path, caplog):
    from adapt.runs.job import _record_interruption
    from adapt.runs.results import RunClock, RunRecord

    record = RunRecord(tmp_path, compose_job("shots=1"))
    with caplog.at_level("WARNING"):
        _record_interruption(record, RunClock(), tmp_path / "checkpoints" / "last.ckpt")
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "interrupted" and results["resume_from"] is None
    assert caplog.messages == [
        f'interrupted by SIGTERM: {tmp_path / "results.json"} says "interrupted"; no evaluation period '
        "had completed, so running the command again starts it afresh"
    ]
