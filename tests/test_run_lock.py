"""The run lock under contention: many processes starting on one folder at the same instant.

Each trial forks real processes (distinct pids, as separate `adapt.run` starts have) that wait on a
barrier and then all take `run.lock` at once; while one holds it, it counts the holders. The lock is
the part under test, so the processes take it and nothing else (a full run per process would take
minutes and race less tightly).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from adapt.runs import rundir

PROCESSES, TRIALS = 6, 15
fork = multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() else None


def _contender(folder: str, barrier, holders, peak, taken) -> None:
    barrier.wait()
    try:
        with rundir.run_lock(folder):
            with holders.get_lock():
                holders.value += 1
                peak.value = max(peak.value, holders.value)
            time.sleep(0.02)  # long enough for an overlapping holder to be counted
            with holders.get_lock():
                holders.value -= 1
            with taken.get_lock():
                taken.value += 1
    except rundir.RunLockedError:
        pass


def _trial(folder: Path) -> tuple[int, int]:
    """(most holders at once, processes that held the lock) for one simultaneous start."""
    barrier = fork.Barrier(PROCESSES)
    holders, peak, taken = fork.Value("i", 0), fork.Value("i", 0), fork.Value("i", 0)
    procs = [
        fork.Process(target=_contender, args=(str(folder), barrier, holders, peak, taken))
        for _ in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    return peak.value, taken.value


def _dead_pid() -> int:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    return dead.pid


@pytest.mark.skipif(fork is None, reason="forks the contending processes")
@pytest.mark.parametrize("left_behind", ["nothing", "a dead process's lock"])
def test_many_simultaneous_starters_never_hold_the_lock_together(tmp_path, left_behind):
    stale = {"host": socket.gethostname(), "pid": _dead_pid(), "started_at": "then"}
    for trial in range(TRIALS):
        folder = tmp_path / f"trial{trial}"
        folder.mkdir()
        if left_behind != "nothing":
            (folder / rundir.LOCK_FILE).write_text(json.dumps(stale))
        peak, taken = _trial(folder)
        assert peak == 1, f"trial {trial}: {peak} processes held {folder / rundir.LOCK_FILE} at once"
        assert taken >= 1
        assert not (folder / rundir.LOCK_FILE).exists()
        assert not list(folder.glob(".run.lock.*"))  # no temporary holder files left


def test_a_young_unreadable_lock_is_being_written_not_stale(tmp_path):
    """An empty lock is what a taker shows between creating and writing it (older adapt, or a file
    system without hard links): within the grace period it is waited for, and then it is held."""
    lock = tmp_path / rundir.LOCK_FILE
    lock.write_text("")

    def write_holder() -> None:
        time.sleep(0.3)
        lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid(), "started_at": "now"}))

    writer = threading.Thread(target=write_holder)
    writer.start()
    try:
        held = f"in use by another run .*pid {os.getppid()}"
        with pytest.raises(rundir.RunLockedError, match=held), rundir.run_lock(tmp_path, grace_s=5.0):
            pass
    finally:
        writer.join()
    assert json.loads(lock.read_text())["pid"] == os.getppid()


def test_an_old_unreadable_lock_is_taken_over_with_a_warning(tmp_path, caplog):
    lock = tmp_path / rundir.LOCK_FILE
    lock.write_text("")
    then = time.time() - 60
    os.utime(lock, (then, then))
    with caplog.at_level("WARNING"), rundir.run_lock(tmp_path) as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert f"taking over the unreadable lock {lock} (empty or not JSON, written 60 s ago)" in caplog.text
    assert not lock.exists()


def test_the_lock_appears_whole(tmp_path, monkeypatch):
    """The holder is linked into place already written: no reader can see an empty run.lock."""
    seen = []
    real_link = os.link

    def link(src, dst, *args, **kwargs):
        seen.append(Path(src).read_text())
        return real_link(src, dst, *args, **kwargs)

    monkeypatch.setattr(rundir.os, "link", link)
    with rundir.run_lock(tmp_path) as path:
        assert json.loads(seen[0])["pid"] == os.getpid() and path.read_text() == seen[0]


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _hold(folder: str, held, release) -> None:
    with rundir.run_lock(folder):
        held.set()
        release.wait(120)


@pytest.mark.skipif(fork is None, reason="forks the process that holds the lock")
def test_a_locked_out_process_writes_nothing_into_the_running_folder(tmp_path, monkeypatch, capsys):
    """Hydra's .hydra/*.yaml and run.log of the running job stay as they are: the second start (here
    `adapt.run` in this process, Hydra and all) stops before either is written (adapt.runs.claim)."""
    from adapt.run import main

    folder = tmp_path / "busy"
    (folder / ".hydra").mkdir(parents=True)
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        (folder / ".hydra" / name).write_text(f"# the running job's {name}\n")
    (folder / "run.log").write_text("[the running job's log]\n")
    held, release = fork.Event(), fork.Event()
    holder = fork.Process(target=_hold, args=(str(folder), held, release))  # the running job
    holder.start()
    try:
        assert held.wait(60)
        before = _snapshot(folder)
        monkeypatch.chdir(tmp_path)
        monkeypatch.setattr(sys, "argv", ["adapt", f"hydra.run.dir={folder}", "logger=none", "trainer=debug"])
        with pytest.raises(SystemExit) as exit_info:
            main()
        assert _snapshot(folder) == before
    finally:
        release.set()
        holder.join(60)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert (
        f"adapt: error: {folder} is in use by another run (host {socket.gethostname()}, pid {holder.pid}, "
    ) in err
    assert "Traceback" not in err
