"""`python -m adapt.run`: adapt a pretrained GLIP to a task and report COCO AP.

Hydra composes `adapt/conf/config.yaml` with the chosen task, model, mode, shots, trainer and
logger; every run writes into its own folder (see `hydra.run.dir`).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

# Config groups whose option names are numbers (shots/5.yaml). Hydra parses `shots=5` as an int
# and refuses it as a group choice, so the command line is quoted before Hydra reads it.
NUMERIC_GROUPS = ("shots",)
_PLAIN_CHOICE = re.compile(r"[0-9]+|[A-Za-z_][A-Za-z0-9_]*|'[^']*'|\"[^\"]*\"")


def quote_numeric_choices(argv: list[str]) -> list[str]:
    """`shots=5` -> `shots='5'`, `shots=1,3,all` -> `shots='1','3',all`; other arguments untouched."""
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        items = value.split(",")
        if sep and key.lstrip("+~") in NUMERIC_GROUPS and all(_PLAIN_CHOICE.fullmatch(i) for i in items):
            value = ",".join(f"'{i}'" if i.isdigit() else i for i in items)
        out.append(f"{key}{sep}{value}")
    return out


def main() -> float | None:
    """Console entry point (`adapt`, `python -m adapt.run`)."""
    sys.argv = [sys.argv[0], *quote_numeric_choices(sys.argv[1:])]
    return _main()


# An absolute path: the same configs whether started as `python -m adapt.run`, as the `adapt`
# console script (where Hydra would look for a `adapt.conf` module) or from any folder.
@hydra.main(config_path=str(Path(__file__).parent / "conf"), config_name="config", version_base="1.3")
def _main(cfg: DictConfig) -> float | None:
    """Run one job; the return value (test AP) lets Hydra sweepers optimise over runs."""
    from adapt.data.errors import DataError
    from adapt.download import DownloadError, MissingDataError
    from adapt.model.checkpoint import CheckpointError
    from adapt.prompt import PromptTooLongError
    from adapt.train.export import ExportError
    from adapt.train.job import run_job

    try:
        return run_job(cfg)
    except (
        MissingDataError,
        DownloadError,
        DataError,
        CheckpointError,
        PromptTooLongError,
        ExportError,
    ) as exc:
        # Bad input or missing files: the message names the file and the fix; a traceback adds nothing.
        # (Inside a sweep the job records the failure in its folder and the sweep goes on instead.)
        print(f"adapt: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
