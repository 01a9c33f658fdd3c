"""A run folder that cannot be written: a full disk, a read-only mount, no permission.

These are not bugs of the run but of where it writes, and each used to surface as a traceback
(Hydra's "Unable to configure handler 'file'", torch's "file write failed", a torn ``last.ckpt``
under a results.json that still said "running"). Here they become one sentence naming the folder,
the error and the way out; what the run could not finish is removed first (a torn checkpoint, the
temporary files of atomic writes), so that running the same command again, once there is room,
continues from the last complete checkpoint.

Errors are recognised by their errno, also where a library reports them as text (torch's and
safetensors' writers raise ``RuntimeError`` / ``SafetensorError`` that quote the OS error).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

# errno -> what it means for a run folder, in words a user acts on.
STORAGE_ERRNOS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission is denied",
    errno.EPERM: "permission is denied",
}


class RunFolderError(RuntimeError):
    """The run folder cannot be written; the message is one sentence with the way out."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.errno = code


def storage_errno(exc: BaseException) -> int | None:
    """The storage errno behind ``exc`` or its causes (``STORAGE_ERRNOS``), else None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        code = getattr(current, "errno", None)
        if isinstance(code, int) and code in STORAGE_ERRNOS:
            return code
        code = _errno_in_text(str(current))
        if code is not None:
            return code
        current = current.__cause__ or current.__context__
    return None


def _errno_in_text(text: str) -> int | None:
    """An errno a library quoted instead of raising OSError ("[Errno 28]", Rust's "code: 28")."""
    for pattern in (r"\[Errno (\d+)\]", r"\bcode: (\d+)"):
        for match in re.finditer(pattern, text):
            if int(match.group(1)) in STORAGE_ERRNOS:
                return int(match.group(1))
    for code in STORAGE_ERRNOS:
        if os.strerror(code) in text:
            return code
    return None


WHERE = "hydra.run.dir=..., or hydra.sweep.dir=... for a multirun"


def way_out(code: int) -> str:
    """What the user does about ``code``."""
    if code in (errno.ENOSPC, errno.EDQUOT):
        return f"free space there or choose another folder ({WHERE})"
    return f"choose a folder you can write ({WHERE})"


def folder_error(folder: str | os.PathLike[str], exc: BaseException, doing: str) -> RunFolderError:
    """The one sentence for a run folder that could not be written while ``doing`` something."""
    code = storage_errno(exc) or errno.EACCES
    return RunFolderError(
        code,
        f"cannot write the run folder {folder} ({doing}): {STORAGE_ERRNOS[code]} "
        f"([Errno {code}] {os.strerror(code)}); {way_out(code)}",
    )


# ------------------------------------------------------------------------------------------------
# A run that failed mid-way


def _torn(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is not None
    except (zipfile.BadZipFile, EOFError, OSError):
        return True


def remove_unfinished(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Remove what a failed write left half done: temporary files of atomic writes and a torn
    ``checkpoints/last.ckpt`` (a complete one is kept: the run resumes from it). Returns them."""
    folder = Path(run_dir)
    removed = []
    for sub in (folder, folder / "checkpoints", folder / "export"):
        for tmp in sub.glob(".*.tmp") if sub.is_dir() else ():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    last = folder / "checkpoints" / "last.ckpt"
    if last.is_file() and _torn(last):
        last.unlink()
        removed.append(last)
    return removed


def unfinished_run_error(run_dir: str | os.PathLike[str], exc: BaseException) -> RunFolderError:
    """A run that hit a full or read-only disk: clean up, record "failed", and say it in one sentence."""
    from adapt.runs.record import RESULTS_FILE, update_record

    folder = Path(run_dir)
    code = storage_errno(exc) or errno.ENOSPC
    removed = remove_unfinished(folder)
    last = folder / "checkpoints" / "last.ckpt"
    reason = f"{STORAGE_ERRNOS[code]} ([Errno {code}] {os.strerror(code)})"
    try:
        update_record(
            folder, {"status": "failed", "error": f"{reason}: {exc}", "error_type": type(exc).__name__}
        )
        recorded = f'{folder / RESULTS_FILE} says "failed"'
    except OSError:
        recorded = f'{folder / RESULTS_FILE} could not be updated either (it may still say "running")'
    kept = (
        f"the last complete checkpoint {last} is kept, so running the same command again continues from it"
        if last.is_file()
        else "no evaluation period was checkpointed, so running the same command again starts afresh"
    )
    cleaned = f", {len(removed)} unfinished files removed" if removed else ""
    return RunFolderError(
        code, f"the run in {folder} stopped: {reason}{cleaned}; {recorded} and {kept}: {way_out(code)}"
    )


# ------------------------------------------------------------------------------------------------
# Before Hydra's job starts


class CheckOutputFolder(Callback):
    """Creates the run folder (or a multirun's sweep folder) before Hydra does, so that a read-only
    or full disk is one sentence and exit status 2 rather than Hydra's traceback of ``mkdir``."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._create(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._create(config, "hydra.sweep.dir")

    @staticmethod
    def _create(config: DictConfig, key: str) -> None:
        from hydra.core.hydra_config import HydraConfig

        HydraConfig.instance().set_config(config)  # the folder's name reads hydra:runtime.choices
        folder = Path(str(OmegaConf.select(config, key)))
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if storage_errno(exc) is None:
                raise
            print(f"adapt: error: {folder_error(folder, exc, 'creating it')}", file=sys.stderr)
            raise SystemExit(2) from None
