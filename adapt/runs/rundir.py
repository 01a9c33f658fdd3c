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
import errno
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from adapt.runs.storage import folder_error, storage_errno

log = logging.getLogger(__name__)

LOCK_FILE = "run.lock"


class RunLockedError(RuntimeError):
    """Another live process is running in this folder."""


# ------------------------------------------------------------------------------------------------
# The lock

# An unreadable (empty, half-written) lock younger than this is being written by its taker; only an
# older one is stale. adapt's own locks are never unreadable (they appear whole, see _publish).
GRACE_S = 5.0
# How long a taker keeps trying while the lock keeps changing under it (other hosts' takers).
GIVE_UP_S = 30.0


def pid_alive(pid: int) -> bool:
    """Whether a process of this id runs on this host (one of another user's counts)."""
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


def _age_s(path: Path) -> float | None:
    """Seconds since the lock was last written, or None when it is gone."""
    try:
        return max(time.time() - path.stat().st_mtime, 0.0)
    except FileNotFoundError:
        return None


def _publish(path: Path, info: dict[str, Any]) -> bool:
    """Create the lock with its content in one step; False when it exists already.

    The holder is written to a private temporary file, then hard-linked into place: the link
    either fails (a lock exists) or makes a complete file appear, so no other taker can read an
    empty lock and take it for a stale one. On a file system without hard links the lock is
    created with ``O_EXCL`` and then written; the grace period covers that short window.
    """
    tmp = path.with_name(f".{path.name}.{info['token']}.tmp")
    with open(tmp, "x", encoding="utf-8") as f:
        json.dump(info, f)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
            raise
        return _create_exclusive(path, info)
    finally:
        tmp.unlink(missing_ok=True)


def _create_exclusive(path: Path, info: dict[str, Any]) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(info, f)
    return True


@contextlib.contextmanager
def _one_taker_at_a_time(folder: Path) -> Iterator[None]:
    """Same-host takers of a folder's lock run their check-and-take one after the other.

    Judging a lock stale and replacing it are two steps; two takers that both judged it stale
    would each delete the other's fresh lock. ``flock`` on the folder serialises them (a stale
    lock is only ever taken over on its own host, where its pid can be checked). Where the file
    system has no ``flock`` the steps run unserialised, as before.
    """
    try:
        import fcntl

        fd = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def _stale_reason(folder: Path, path: Path, info: dict[str, Any], grace_s: float) -> str | None:
    """Why the existing lock may be taken over; None to look again (it vanished or is being
    written); RunLockedError when a live run holds it."""
    age = _age_s(path)
    if age is None:
        return None
    held = _read_lock(path)
    if not held:
        if age < grace_s:
            time.sleep(min(0.05, grace_s))
            return None
        return f"taking over the unreadable lock {path} (empty or not JSON, written {age:.0f} s ago)"
    host, pid = held.get("host"), held.get("pid")
    same_host = host == info["host"]
    if same_host and isinstance(pid, int) and pid != info["pid"] and pid_alive(pid):
        raise RunLockedError(
            f"{folder} is in use by another run (host {host}, pid {pid}, started "
            f"{held.get('started_at')}): wait for it to finish, or give this run other "
            "overrides so it gets its own folder"
        )
    if not same_host:
        raise RunLockedError(
            f"{folder} is in use by a run on host {host} (pid {pid}, started "
            f"{held.get('started_at')}): if that job is gone, delete {path} and run again"
        )
    return (
        f"taking over the stale lock {path} (pid {pid} on {host}, started {held.get('started_at')}, "
        "is no longer running)"
    )


def _take(folder: Path, path: Path, info: dict[str, Any], grace_s: float) -> None:
    deadline = time.monotonic() + grace_s + GIVE_UP_S
    while time.monotonic() < deadline:
        with _one_taker_at_a_time(folder):
            if _publish(path, info):
                return
            reason = _stale_reason(folder, path, info, grace_s)
            if reason is not None:
                log.warning("%s", reason)
                path.unlink(missing_ok=True)
    raise RunLockedError(f"{folder} is in use by another run: its lock {path} keeps changing")


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike[str], grace_s: float = GRACE_S) -> Iterator[Path]:
    """Hold ``<run_dir>/run.lock`` while the body runs; raise :class:`RunLockedError` if taken.

    A lock whose process is gone (same host, pid not running: a ``kill -9``, an OOM kill) is taken
    over with a warning, as is an unreadable one older than ``grace_s``. On another host liveness
    cannot be checked, so such a lock stops the run and the message says which file to delete once
    that job is known to be gone. A folder that cannot be written is a
    :class:`~adapt.runs.storage.RunFolderError`.
    """
    folder = Path(run_dir)
    path = folder / LOCK_FILE
    info = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "token": uuid.uuid4().hex,  # this taking of the lock (a pid can be reused)
    }
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _take(folder, path, info, grace_s)
    except OSError as exc:
        if storage_errno(exc) is None:
            raise
        raise folder_error(folder, exc, "taking its run.lock") from None
    try:
        yield path
    finally:
        with _one_taker_at_a_time(folder):
            if _read_lock(path).get("token") == info["token"]:
                path.unlink(missing_ok=True)


def lock_holder() -> bool:
    """Whether this process should take the run folder's lock and write its records.

    Under DDP every rank runs the job; only global rank 0 writes (Lightning's own rank, read from
    RANK / LOCAL_RANK / SLURM_PROCID as Lightning reads it).
    """
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0) == 0
