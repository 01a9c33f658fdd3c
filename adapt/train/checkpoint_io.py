"""``last.ckpt`` written the way every other adapt file is: whole or not at all.

Lightning's writer (``TorchCheckpointIO`` through an fsspec transaction) stages the file in the
system's temporary folder and moves it over the checkpoint; across file systems that move is a copy
onto the old file, so a disk that filled up (or a kill) during the copy left a torn ``last.ckpt``
and no intact one to resume from. :class:`AtomicCheckpointIO` writes a temporary sibling and
renames it (``adapt.atomic``): a failed write leaves the previous checkpoint as it was and removes
its own temporary file.
"""

from __future__ import annotations

import io
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.types import _PATH

from adapt.atomic import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO for local run folders, with an atomic save."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        with atomic_write(path, "wb") as f:
            f.write(buffer.getbuffer())
