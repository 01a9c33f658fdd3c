"""``results.json``, the one record of a run: read it, and merge fields into it.

Three writers used to take turns on the file: the sweep marks a job started (host, pid, SLURM ids),
the training job rewrites it after every evaluation and at the end, and a failure adds the
traceback. Each wrote a whole new record, so a later writer dropped what an earlier one knew (a
killed job no longer said where it had run). Now every writer goes through :func:`update_record`,
which merges its fields into what is on disk and writes the result atomically: a field stays until
someone writes a new value for it, or the start of a new attempt drops it on purpose.

This module imports nothing heavy: Hydra's sweeper and the report read results through it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from adapt.atomic import write_json

RESULTS_FILE = "results.json"


def read_results(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The run's results.json, or None when it is absent or unreadable (a torn write)."""
    path = Path(run_dir) / RESULTS_FILE
    try:
        with path.open(encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def update_record(
    run_dir: str | os.PathLike[str], fields: Mapping[str, Any], drop: Iterable[str] = ()
) -> dict[str, Any]:
    """Merge ``fields`` into ``<run_dir>/results.json`` (after removing the keys in ``drop``).

    Returns the record as written. A torn or missing file counts as empty: the merge starts over
    rather than failing the job that wanted to record something.
    """
    record = read_results(run_dir) or {}
    for key in drop:
        record.pop(key, None)
    record.update(fields)
    write_json(record, Path(run_dir) / RESULTS_FILE)
    return record


def composed_config(cfg: DictConfig | Mapping[str, Any]) -> Any:
    """A job's composed config as plain data (interpolations resolved where they can be)."""
    if not isinstance(cfg, DictConfig):
        return dict(cfg)
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # an interpolation that needs a running Hydra job: keep the raw form
        return OmegaConf.to_container(cfg, resolve=False)
