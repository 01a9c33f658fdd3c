"""What a job writes into its folder only once it holds the run lock: Hydra's records and run.log.

Hydra writes ``<run>/.hydra/{config,hydra,overrides}.yaml`` and opens ``<run>/run.log`` before the
task function starts, so a process that was then locked out of a running folder had already
rewritten the running job's records and appended its error to the running job's log. adapt's
config therefore turns both off in Hydra (``hydra.output_subdir: null``, the ``file`` handler left
off the root logger and opened lazily) and :func:`claim_folder` does the same work right after
:func:`adapt.runs.rundir.run_lock` succeeded: the same three files, and the same handler (file name,
format and level read from ``hydra.job_logging.handlers.file``).

Outside a Hydra job (tests, the Python API) there is nothing to record and nothing is written.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from adapt.atomic import write_text
from adapt.runs.storage import folder_error, storage_errno

HYDRA_DIR = ".hydra"


class RunLog(logging.FileHandler):
    """The run's ``run.log``; a disk that fills or turns read-only mid-run costs the log, in one
    line on stderr, instead of a "--- Logging error ---" traceback for every later record."""

    def handleError(self, record: logging.LogRecord) -> None:
        exc = sys.exc_info()[1]
        if exc is None or storage_errno(exc) is None:
            super().handleError(record)
            return
        logging.getLogger().removeHandler(self)
        print(
            f"adapt: warning: {self.baseFilename} is no longer written ({exc}); "
            "the log goes on on the console only",
            file=sys.stderr,
        )


def claim_folder(cfg: DictConfig, folder: Path) -> None:
    """Write the Hydra job's records into ``folder`` and start its run.log (see the module docstring)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    hydra = HydraConfig.get()
    try:
        save_hydra_records(cfg, hydra, folder / HYDRA_DIR)
        attach_run_log(hydra)
    except OSError as exc:
        if storage_errno(exc) is None:
            raise
        raise folder_error(folder, exc, "writing its .hydra records and run.log") from None


def save_hydra_records(cfg: DictConfig, hydra: Any, where: Path) -> None:
    """``config.yaml`` (the job's config), ``hydra.yaml`` and ``overrides.yaml``, as Hydra writes them."""
    records = {
        "config.yaml": cfg,
        "hydra.yaml": OmegaConf.create({"hydra": hydra}),
        "overrides.yaml": hydra.overrides.task,
    }
    for name, node in records.items():
        write_text(where / name, OmegaConf.to_yaml(node))


def attach_run_log(hydra: Any) -> logging.Handler | None:
    """Hydra's ``file`` handler of ``hydra.job_logging`` on the root logger, unless one is there."""
    spec: Any = OmegaConf.select(hydra, "job_logging.handlers.file")
    if spec is None or not spec.get("filename"):
        return None
    filename = os.path.abspath(str(spec.filename))
    root = logging.getLogger()
    for handler in root.handlers:
        if isinstance(handler, logging.FileHandler) and handler.baseFilename == filename:
            return handler  # the user put Hydra's own handler back on the root logger
    handler = RunLog(filename, mode=str(spec.get("mode") or "a"), encoding="utf-8")
    formatter: Any = OmegaConf.select(hydra, f"job_logging.formatters.{spec.get('formatter')}")
    if formatter is not None:
        handler.setFormatter(logging.Formatter(formatter.get("format"), formatter.get("datefmt")))
    if spec.get("level") is not None:
        handler.setLevel(spec.level)
    root.addHandler(handler)
    return handler
