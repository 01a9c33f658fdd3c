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

JOIN_TIMEOUT_S = 5.0

_registered = False


def _is_worker(process: multiprocessing.process.BaseProcess) -> bool:
    from torch.utils.data._utils.worker import _worker_loop

    return getattr(process, "_target", None) is _worker_loop


def stop_workers() -> int:
    """Kill this process's live DataLoader workers and reap them; returns how many there were."""
    workers = [p for p in multiprocessing.active_children() if _is_worker(p)]
    for process in workers:
        process.kill()
    for process in workers:
        process.join(JOIN_TIMEOUT_S)
    return len(workers)


def stop_workers_at_exit() -> None:
    """Register :func:`stop_workers` to run at interpreter exit (once per process)."""
    global _registered
    if not _registered:
        atexit.register(stop_workers)
        _registered = True
