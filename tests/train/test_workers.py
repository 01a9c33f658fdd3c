"""Resuming with DataLoader workers trains the model an undisturbed run trains.

Lightning creates the training iterator before it sets the sampler's epoch, and a DataLoader with
workers draws its first indices at that moment; a run resumed at epoch k used to replay epoch 0's
order and augmentation in its first period (`num_workers=0` reads the sampler lazily and was
right). The first test is that sequence on the data module alone; the second kills a real run
twice (kill -9, then SIGTERM) with two workers and compares the exports byte for byte.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate
from lightning.fabric.utilities.data import _set_sampler_epoch
from train_helpers import TINY_INPUT, compose_job

from adapt.data import build_task
from adapt.runs.job import build_model, run_job, task_prompt


def _datamodule(workers: int, epoch: int):
    cfg = compose_job("mode=prompt", "shots=1", f"data.num_workers={workers}")
    task = build_task(cfg.task)
    model, _ = build_model(cfg)
    dm = instantiate(cfg.data)(task, task_prompt(task, model), model.cfg.input)
    progress = SimpleNamespace(current=SimpleNamespace(processed=epoch))
    dm.trainer = SimpleNamespace(
        world_size=1, global_rank=0, fit_loop=SimpleNamespace(epoch_progress=progress)
    )
    return dm


def test_a_resumed_period_draws_the_batches_of_an_undisturbed_one_with_workers():
    torch.set_num_threads(1)
    reference = _datamodule(workers=0, epoch=0)
    loader = reference.train_dataloader()
    _set_sampler_epoch(loader, 2)  # an undisturbed run reaching its third period
    want = next(iter(loader))

    resumed = _datamodule(workers=2, epoch=2)  # a run resumed at its third period
    loader = resumed.train_dataloader()
    batches = iter(loader)  # Lightning's order: the iterator first (workers draw indices now) ...
    _set_sampler_epoch(loader, 2)  # ... then the epoch
    got = next(batches)
    assert torch.equal(got["images"], want["images"])
    assert [t["image_id"] for t in got["targets"]] == [t["image_id"] for t in want["targets"]]
    for g, w in zip(got["targets"], want["targets"], strict=True):
        assert torch.equal(g["boxes"], w["boxes"])  # same scale and flip draws


# A run of three evaluation periods with no early stop; one-shot, two workers.
RUN = ["mode=prompt", "shots=1", "recipe.stop_patience=1000", "trainer.max_steps=-1", "trainer.max_epochs=3"]


def _complete_checkpoint(last: Path, periods: int) -> bool:
    """``last.ckpt`` exists, is a whole archive and records ``periods`` completed periods."""
    try:
        with zipfile.ZipFile(last) as archive:
            if archive.testzip() is not None:
                return False
        return int(torch.load(last, weights_only=True)["epoch"]) + 1 >= periods
    except (OSError, zipfile.BadZipFile, RuntimeError, EOFError, KeyError):
        return False


def _start_and_stop(run_dir: Path, periods: int, how: signal.Signals) -> subprocess.CompletedProcess:
    """`python -m adapt.run` on ``run_dir`` with two workers, signalled with ``how`` (the whole
    process group, as SLURM or a shell does) once ``periods`` evaluation periods are checkpointed."""
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    command = [
        *(sys.executable, "-m", "adapt.run", f"hydra.run.dir={run_dir}"),
        *("trainer=debug", "logger=none", "data.num_workers=2", *TINY_INPUT, *RUN),
    ]
    proc = subprocess.Popen(
        command,
        cwd=run_dir.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    last = run_dir / "checkpoints" / "last.ckpt"
    try:
        deadline = time.monotonic() + 600
        while not _complete_checkpoint(last, periods):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, f"no checkpoint of {periods} periods"
            time.sleep(0.1)
        os.killpg(proc.pid, how)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


@pytest.mark.slow  # three real processes with workers, killed and resumed (about a minute); -m slow
@pytest.mark.skipif(not hasattr(os, "killpg"), reason="signals a process group")
def test_kill_9_and_sigterm_with_workers_resume_to_the_undisturbed_export(tmp_path):
    torch.set_num_threads(1)
    undisturbed = tmp_path / "undisturbed"
    run_job(compose_job(*RUN, "data.num_workers=0"), run_dir=undisturbed)  # workers change nothing

    run_dir = tmp_path / "interrupted"
    run_dir.mkdir()
    killed = _start_and_stop(run_dir, periods=1, how=signal.SIGKILL)  # after the first checkpoint
    assert killed.returncode == -signal.SIGKILL
    assert json.loads((run_dir / "results.json").read_text())["status"] == "running"
    stopped = _start_and_stop(run_dir, periods=2, how=signal.SIGTERM)  # resumed, then after the second
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    assert "taking over the stale lock" in stopped.stdout + stopped.stderr  # the kill -9 left it
    assert json.loads((run_dir / "results.json").read_text())["status"] == "interrupted"
    run_job(compose_job(*RUN, "data.num_workers=2"), run_dir=run_dir)  # the same command, again

    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "complete" and results["resumed"]
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (run_dir / "export" / name).read_bytes() == (undisturbed / "export" / name).read_bytes()


# ------------------------------------------------------------------------------------------------
# A worker that raises ends the run


class _Broken(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int):
        raise ValueError(f"sample {index} cannot be read")


def test_workers_of_a_failed_iterator_are_stopped():
    """The workers ignore SIGTERM (datamodule.init_worker), so an iterator kept alive by an exception
    used to leave them for multiprocessing's exit handler, which waited for them for ever."""
    from adapt.train.datamodule import init_worker
    from adapt.train.workers import stop_workers

    batches = iter(torch.utils.data.DataLoader(_Broken(), num_workers=2, worker_init_fn=init_worker))
    with pytest.raises(ValueError, match="cannot be read"):
        next(batches)
    workers = list(batches._workers)  # still alive: `batches` holds them, as a traceback would
    assert all(w.is_alive() for w in workers)
    assert stop_workers() >= 2  # these two, and any an earlier test left behind
    assert not any(w.is_alive() for w in workers)


FAILING_RUN = """
import sys
import torch
sys.path.insert(0, {helpers!r})
from train_helpers import compose_job
import adapt.data.coco as coco
from adapt.runs.job import run_job

read = coco.CocoDetection.__getitem__

def broken(self, index):
    if torch.utils.data.get_worker_info() is not None:
        raise ValueError("a worker cannot read this sample")
    return read(self, index)

coco.CocoDetection.__getitem__ = broken
run_job(compose_job("mode=prompt", "shots=1", "data.num_workers=2"), run_dir=sys.argv[1])
"""


@pytest.mark.slow  # a real run whose DataLoader worker raises (tens of seconds); -m slow
def test_a_run_whose_worker_raises_ends_instead_of_hanging(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(FAILING_RUN.format(helpers=str(Path(__file__).parent)))
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "run")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, err = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the run hung after its DataLoader worker raised")
    assert proc.returncode == 1 and "a worker cannot read this sample" in err
    assert json.loads((tmp_path / "run" / "results.json").read_text())["status"] == "failed"
