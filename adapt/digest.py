"""The one file hasher: SHA-256 of a file, streamed.

Checkpoints (GLIP-L is 5 GB), exports and shipped weights are identified by their SHA-256; every
place that hashes a file calls :func:`file_sha256`, so a file has one identity everywhere.
"""

from __future__ import annotations

import hashlib
import os


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of the file's bytes (read in chunks by ``hashlib.file_digest``, Python >= 3.11)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
