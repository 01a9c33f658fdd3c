"""SIGTERM (SLURM time-out, ``timeout``, ``kill``): stop at a clean point and say how to continue.

Inside Lightning's loops Lightning raises its ``SIGTERMException`` at the next batch boundary, so a
checkpoint being written is never torn; outside them :class:`Interrupted` is raised at once. The job
records status "interrupted" with the checkpoint to resume from and exits with status 143.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from lightning.pytorch.utilities.exceptions import SIGTERMException


class Interrupted(SIGTERMException):
    """SIGTERM outside Lightning's loops, raised at once."""


def _raise_on_sigterm(signum: int, frame: Any) -> None:
    # Lightning's handler calls this one too while it is installed; it then stops the run itself.
    if signal.getsignal(signal.SIGTERM) is _raise_on_sigterm:
        raise Interrupted(128 + signum)


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """SIGTERM raises :class:`Interrupted` inside the block (main thread only: a threaded launcher
    runs jobs elsewhere, where signal handlers cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


EXIT_SIGTERM = 128 + signal.SIGTERM  # the shell convention: 143
