"""One process per run folder at a time: ``<run_dir>/run.lock``.

A run folder is named by its grid coordinates plus a hash of the overrides that change the result
(``adapt.resolvers.run_suffix``), so the same command always finds its own folder. :func:`run_lock`
holds ``<run_dir>/run.lock`` (host, pid, start time) for the whole job, so a second process aimed at
the same folder stops at once, naming the holder, instead of interleaving its writes and deleting
the first one's checkpoints.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LOCK_FILE = "run.lock"


class RunLockedError(RuntimeError):
    """Another live process is running in this folder."""


# ------------------------------------------------------------------------------------------------
# The lock


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read_lock(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _try_create(path: Path, info: dict[str, Any]) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(info, f)
    return True


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold ``<run_dir>/run.lock`` while the body runs; raise :class:`RunLockedError` if taken.

    A lock whose process is gone (same host, pid not running: a ``kill -9``, an OOM kill) is taken
    over with a warning. On another host liveness cannot be checked, so such a lock stops the run
    and the message says which file to delete once that job is known to be gone.
    """
    folder = Path(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    info = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    for _ in range(3):  # a race with another taker retries, then reports who holds it
        if _try_create(path, info):
            break
        held = _read_lock(path)
        host, pid = held.get("host"), held.get("pid")
        same_host = host == info["host"]
        if same_host and isinstance(pid, int) and pid != info["pid"] and _pid_alive(pid):
            raise RunLockedError(
                f"{folder} is in use by another run (host {host}, pid {pid}, started "
                f"{held.get('started_at')}): wait for it to finish, or give this run other "
                "overrides so it gets its own folder"
            )
        if not same_host and host is not None:
            raise RunLockedError(
                f"{folder} is in use by a run on host {host} (pid {pid}, started "
                f"{held.get('started_at')}): if that job is gone, delete {path} and run again"
            )
        log.warning(
            "taking over the stale lock %s (pid %s on %s, started %s, is no longer running)",
            path,
            pid,
            host,
            held.get("started_at"),
        )
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    else:
        raise RunLockedError(f"{folder} is in use by another run: its lock {path} keeps changing")
    try:
        yield path
    finally:
        if _read_lock(path).get("pid") == info["pid"]:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def lock_holder() -> bool:
    """Whether this process should take the run folder's lock and write its records.

    Under DDP every rank runs the job; only global rank 0 writes (Lightning's own rank, read from
    RANK / LOCAL_RANK / SLURM_PROCID as Lightning reads it).
    """
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0) == 0
