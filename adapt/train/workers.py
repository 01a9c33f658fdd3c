"""DataLoader workers never outlive the run that started them.

The workers ignore SIGTERM (``adapt.train.datamodule.init_worker``: a SIGTERM to the process group
must reach only the main process, which stops the run cleanly and shuts them down). That has a
price: when an exception kept an iterator alive (a worker that raised, a traceback holding the
frames), torch's own shutdown is skipped at interpreter exit and multiprocessing's exit handler
terminates the daemonic workers with SIGTERM, which they ignore, then joins them: the run hung
for ever after printing its error. :func:`stop_workers` kills them (SIGKILL) instead; the job calls
it when it fails, and :func:`stop_workers_at_exit` makes the interpreter call it before
multiprocessing's handler runs (``atexit`` runs the last registered first).
"""

from __future__ import annotations

import atexit
import multiprocessing
import signal

JOIN_TIMEOUT_S = 5.0

_registered = False


def stop_workers() -> int:
    """Kill this process's live DataLoader workers and reap them; returns how many there were.

    The workers are the process's daemonic children: a started process no longer holds its target
    (``Process.start`` drops it), so they cannot be told by it; daemonic children are what
    multiprocessing's exit handler would terminate anyway, and a run starts no others.
    """
    workers = [p for p in multiprocessing.active_children() if p.daemon]
    if not workers:
        return 0
    # torch's SIGCHLD handler would raise "DataLoader worker ... is killed by signal" over the
    # error that is ending the run: the default disposition while they are killed and reaped.
    try:
        handler = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    except ValueError:  # not the main thread: signal handlers cannot be changed here
        handler = None
    try:
        for process in workers:
            process.kill()
        for process in workers:
            process.join(JOIN_TIMEOUT_S)
    finally:
        if handler is not None:
            signal.signal(signal.SIGCHLD, handler)
    return len(workers)


def stop_workers_at_exit() -> None:
    """Register :func:`stop_workers` to run at interpreter exit (once per process)."""
    global _registered
    if not _registered:
        atexit.register(stop_workers)
        _registered = True
