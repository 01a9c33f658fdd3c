"""`python -m adapt.run`: adapt a pretrained GLIP to a task and report COCO AP.

Hydra composes `adapt/conf/config.yaml` with the chosen task, model, mode, shots, trainer and
logger; every run writes into its own folder (see `hydra.run.dir`).
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
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
