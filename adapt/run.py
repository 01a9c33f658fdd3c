"""`python -m adapt.run`: adapt a pretrained GLIP to a task and report COCO AP.

Hydra composes `adapt/conf/config.yaml` with the chosen task, model, mode, trainer, logger and
callbacks, and plain values such as `shots=5` and `seed=30`; every run writes into its own folder
(see `hydra.run.dir`).
"""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path

import hydra
from omegaconf import DictConfig


def main() -> float | None:
    """Console entry point (`adapt`, `python -m adapt.run`)."""
    return _main()


# An absolute path: the same configs whether started as `python -m adapt.run`, as the `adapt`
# console script (where Hydra would look for a `adapt.conf` module) or from any folder.
@hydra.main(config_path=str(Path(__file__).parent / "conf"), config_name="config", version_base="1.3")
def _main(cfg: DictConfig) -> float | None:
    """Run one job; the return value (test AP) lets Hydra sweepers optimise over runs."""
    from adapt.data.errors import DataError
    from adapt.download import DownloadError, MissingDataError
    from adapt.export import ExportError
    from adapt.model.checkpoint import CheckpointError
    from adapt.prompt import PromptTooLongError
    from adapt.runs.config import ConfigError
    from adapt.runs.job import run_job
    from adapt.runs.rundir import RunLockedError
    from adapt.runs.storage import RunFolderError
    from adapt.runs.summary import to_log_files

    try:
        return run_job(cfg)
    except (
        ConfigError,
        MissingDataError,
        DownloadError,
        DataError,
        CheckpointError,
        PromptTooLongError,
        ExportError,
        RunLockedError,
        RunFolderError,
    ) as exc:
        # Bad input or missing files: the message names the file and the fix; a traceback adds nothing.
        # (Inside a sweep the job records the failure in its folder and the sweep goes on instead.)
        print(f"adapt: error: {exc}", file=sys.stderr)
        if not isinstance(exc, RunLockedError | RunFolderError):  # that folder is not this run's to write
            to_log_files(f"adapt: error: {exc}", logging.ERROR)
        raise SystemExit(2) from None
    except Exception:
        # Hydra prints the traceback to stderr; run.log keeps it too.
        to_log_files("adapt: the run failed:\n" + traceback.format_exc(), logging.ERROR)
        raise


if __name__ == "__main__":
    main()
