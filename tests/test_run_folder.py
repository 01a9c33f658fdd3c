"""A run folder that cannot be written (full disk, read-only mount): one sentence, nothing torn.

The default tests make the kernel's answer happen where adapt writes (the OSError a full or
read-only file system raises, from `open`); the slow ones mount a real tmpfs (read-only, or a few
hundred KiB that a run fills) in a private mount namespace and run `python -m adapt.run` on it.
"""

from __future__ import annotations

import builtins
import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from adapt.runs import claim, rundir
from adapt.runs.resume import check_resume_file
from adapt.runs.storage import RunFolderError
from tests.train.train_helpers import TINY_INPUT, compose_job

WAY_OUT = "(hydra.run.dir=..., or hydra.sweep.dir=... for a multirun)"


class _FullDisk:
    """A file on a disk that fills up: half of the next write lands, then ENOSPC."""

    def __init__(self, f) -> None:
        self._f = f

    def write(self, data) -> int:
        self._f.write(data[: len(data) // 2])
        self._f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()


def test_a_disk_that_fills_during_a_run_keeps_the_last_complete_checkpoint(tmp_path, monkeypatch):
    """The second checkpoint hits a full disk: the first stays whole, results.json says "failed" and
    why, the half-written file is gone, and the error is one sentence with the way out."""
    real_open = builtins.open
    checkpoint_writes = []

    def open_on_a_filling_disk(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if "w" in mode and "last.ckpt" in os.fspath(file):
            checkpoint_writes.append(file)
            if len(checkpoint_writes) == 2:
                return _FullDisk(f)
        return f

    monkeypatch.setattr(builtins, "open", open_on_a_filling_disk)
    run = [
        "mode=prompt",
        "shots=1",
        "recipe.stop_patience=1000",
        "trainer.max_steps=-1",
        "trainer.max_epochs=2",
    ]
    with pytest.raises(RunFolderError) as info:
        from adapt.runs.job import run_job

        run_job(compose_job(*run), run_dir=tmp_path)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert str(info.value) == (
        f"the run in {tmp_path} stopped: the disk is full ([Errno 28] No space left on device); "
        f'{tmp_path / "results.json"} says "failed" and the last complete checkpoint {last} is kept, so '
        "running the same command again continues from it: free space there or choose another folder "
        f"{WAY_OUT}"
    )
    check_resume_file(last)  # whole: the one of the first period
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "failed" and "No space left on device" in results["error"]
    assert len(results["val_history"]) == 2  # the progress it made is kept


@pytest.mark.parametrize(
    "code", [errno.EROFS, errno.ENOSPC, errno.EACCES], ids=["read-only", "full", "denied"]
)
def test_a_run_folder_that_cannot_be_written_is_one_sentence(tmp_path, monkeypatch, capsys, code):
    """`python -m adapt.run` (Hydra and all, in this process) whose first write into the folder, the
    run lock, fails as the kernel fails it."""
    from adapt.run import main

    def refuse(file, *args, **kwargs):
        raise OSError(code, os.strerror(code), os.fspath(file))

    monkeypatch.setattr(rundir, "open", refuse, raising=False)
    folder = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["adapt", f"hydra.run.dir={folder}", "logger=none", "trainer=debug"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    meaning = {errno.EROFS: "the file system is read-only", errno.ENOSPC: "the disk is full"}
    way = (
        "free space there or choose another folder"
        if code == errno.ENOSPC
        else "choose a folder you can write"
    )
    assert err.splitlines() == [
        f"adapt: error: cannot write the run folder {folder} (taking its run.lock): "
        f"{meaning.get(code, 'permission is denied')} ([Errno {code}] {os.strerror(code)}); {way} {WAY_OUT}"
    ]


def test_a_run_log_on_a_disk_that_fills_stops_with_one_line(tmp_path, capsys):
    handler = claim.RunLog(str(tmp_path / "run.log"), encoding="utf-8")
    root = logging.getLogger()
    # Only this handler: an in-process Hydra run earlier in the session leaves a console handler on
    # the root logger whose stream (an earlier test's captured stderr) is closed by now.
    kept = root.handlers[:]
    root.handlers = [handler]
    try:
        handler.stream = _FullDisk(handler._open())
        for _ in range(3):
            root.warning("a line the disk has no room for")
        assert handler not in root.handlers
    finally:
        root.handlers = kept
        handler.close()
    err = capsys.readouterr().err
    assert "Logging error" not in err and "Traceback" not in err
    assert err.count(f"adapt: warning: {tmp_path / 'run.log'} is no longer written ([Errno 28]") == 1


# ------------------------------------------------------------------------------------------------
# Real file systems: a read-only and a tiny tmpfs, mounted in a private mount namespace


def _namespace() -> list[str] | None:
    """A command prefix that runs its command with a private mount table, or None."""
    unshare = shutil.which("unshare")
    if unshare is None or not sys.platform.startswith("linux"):
        return None
    for prefix in ([unshare, "-m"], [unshare, "-rm"]):  # root, else a user namespace
        if subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
            return prefix
    return None


def _run_on_tmpfs(tmp_path: Path, mount_options: str, *overrides: str) -> subprocess.CompletedProcess:
    prefix = _namespace()
    if prefix is None:
        pytest.skip("needs unshare and a private mount namespace")
    mnt = tmp_path / "mnt"
    mnt.mkdir(exist_ok=True)
    run = " ".join(
        [
            sys.executable,
            "-m",
            "adapt.run",
            f"hydra.run.dir={mnt}/run",
            "logger=none",
            "trainer=debug",
            *overrides,
        ]
    )
    script = textwrap.dedent(
        f"""
        set -e
        mount -t tmpfs -o {mount_options} tmpfs {mnt}
        {run}
        """
    )
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [*prefix, "sh", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )


@pytest.mark.slow  # a real adapt.run process on a real read-only mount; -m slow
def test_a_read_only_mount_is_one_sentence(tmp_path):
    proc = _run_on_tmpfs(tmp_path, "ro,size=1m")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [
        f"adapt: error: cannot write the run folder {tmp_path / 'mnt' / 'run'} (creating it): the file "
        f"system is read-only ([Errno 30] Read-only file system); choose a folder you can write {WAY_OUT}"
    ]


@pytest.mark.slow  # a real adapt.run process filling a real tmpfs; -m slow
def test_a_disk_that_fills_during_a_real_run_is_one_sentence(tmp_path):
    run = [*TINY_INPUT, "mode=full", "shots=1", "trainer.max_steps=-1", "trainer.max_epochs=3"]
    proc = _run_on_tmpfs(tmp_path, "size=100m", *run)
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("adapt: error:")]
    assert "the disk is full ([Errno 28] No space left on device)" in line
    assert "Traceback" not in proc.stderr and "Logging error" not in proc.stderr
