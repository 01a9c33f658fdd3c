"""Continuing an interrupted run: the one parser of ``resume`` and the check of what it resumes from.

``resume=auto`` (the default): a job requeued after a SLURM time-out or preemption, or re-run after a
crash or Ctrl-C, continues where it stopped, while a job that never trained starts quietly;
``true`` is a user's explicit request, so a missing checkpoint is worth a warning; ``false`` starts
over (Lightning then replaces the old last.ckpt).
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Any

from adapt.model import CheckpointError

log = logging.getLogger(__name__)

RESUME_VALUES = ("false", "true", "auto")


def parse_resume(setting: Any) -> str:
    """``resume`` as one of false, true, auto (``None`` is false); anything else is a ValueError."""
    value = "false" if setting is None else str(setting).strip().lower()
    if value == "none":
        value = "false"
    if value not in RESUME_VALUES:
        raise ValueError(f"resume={setting} is not one of false, true or auto")
    return value


def resume_checkpoint(setting: Any, last: Path) -> str | None:
    """The checkpoint to continue from under ``resume=false|true|auto``, or None to start afresh."""
    value = parse_resume(setting)
    if value == "false":
        return None
    if last.is_file():
        log.info("continuing the interrupted attempt from %s (resume=false starts over)", last)
        return str(last)
    if value == "true":
        log.warning("resume=true but %s does not exist: starting from scratch", last)
    return None


def check_resume_file(path: Path) -> None:
    """Refuse a ``last.ckpt`` that is not a complete torch archive, in one sentence with the way out.

    A checkpoint torn by a full disk or a kill while Lightning wrote it (Lightning writes in place,
    not by rename) otherwise surfaces as torch's "failed finding central directory" traceback.
    The archive's CRCs are checked too (one read of the file, which the load then finds cached).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
        problem = None if bad is None else f"member {bad} fails its CRC check"
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        problem = str(exc) or type(exc).__name__
    if problem is not None:
        raise CheckpointError(
            f"{path} is truncated or corrupt ({problem}), so the run cannot resume from it: "
            "run again with resume=false to start over (it is then replaced), or delete it"
        )
