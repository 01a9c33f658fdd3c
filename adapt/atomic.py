"""Atomic file writes: results, splits, exports and checkpoints are never seen half-written.

Every writer goes to a temporary sibling of the target, is flushed to disk, then renamed onto the
target (`os.replace` is atomic on POSIX and Windows). An interrupted job therefore leaves either
the old file or the new one, which is what resuming runs and sweeps rely on.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path to write by name (safetensors, torch.save); renamed onto `path` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """An open temporary file; renamed onto `path` only if the block succeeds."""
    encoding = None if "b" in mode else "utf-8"
    with atomic_path(path) as tmp, open(tmp, mode, encoding=encoding) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_write(path) as f:
        f.write(text)
    return Path(path)


def write_json(obj: Any, path: str | os.PathLike[str], indent: int | None = 2) -> Path:
    """JSON with a trailing newline; non-JSON values (paths, numpy scalars) are written as text."""
    with atomic_write(path) as f:
        json.dump(obj, f, indent=indent, default=str)
        f.write("\n")
    return Path(path)
