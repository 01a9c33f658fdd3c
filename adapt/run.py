"""`python -m adapt.run`: adapt a pretrained GLIP to a task and report COCO AP.

Hydra composes `adapt/conf/config.yaml` with the chosen task, model, mode, shots, trainer and
logger; every run writes into its own folder (see `hydra.run.dir`).
"""

from __future__ import annotations

import re
import sys

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


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def _main(cfg: DictConfig) -> float | None:
    """Run one job; the return value (test AP) lets Hydra sweepers optimise over runs."""
    try:
        from adapt.train.job import run_job
    except ImportError as exc:  # the training job lands with the training issue
        print(f"adapt: the training job is not available in this build ({exc}).", file=sys.stderr)
        print("adapt: `python -m adapt.run --cfg job` shows the composed configuration.", file=sys.stderr)
        raise SystemExit(2) from None
    return run_job(cfg)


if __name__ == "__main__":
    main()
