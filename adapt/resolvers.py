"""The OmegaConf resolvers adapt's configs use, registered wherever configs are composed.

``${adapt_run_suffix:overrides,exclude_keys}`` names a run folder (conf/config.yaml,
``hydra.run.dir``): it appends ``-<8 hex>``, a hash of the command-line overrides that are not
already in the folder name and that can change the result; with none it appends nothing. The same
overrides always give the same folder, so ``resume`` finds its own. Which keys are left out is
configuration: ``hydra.job.config.override_dirname.exclude_keys`` in conf/config.yaml (a key, or a
``prefix.*`` pattern).

Only configuration the user composes is resolved here: files adapt receives (results.json, a
sweep manifest, an export's JSON) are read as plain JSON and never interpolated.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Iterable
from typing import Any

from omegaconf import OmegaConf

RUN_SUFFIX = "adapt_run_suffix"


def _override_key(text: str) -> str:
    """The key an override sets (``+a.b=1`` -> ``a.b``), without Hydra's parser: this runs per job."""
    key = text.split("=", 1)[0].strip()
    return key.lstrip("+~")


def _excluded(key: str, patterns: Iterable[str]) -> bool:
    return any(key == p or fnmatch.fnmatchcase(key, p) for p in patterns)


def run_suffix(overrides: Iterable[Any] | None, exclude: Iterable[Any] | None = None) -> str:
    """``-<8 hex>`` identifying the overrides not in ``exclude``, or "" when none is left.

    The overrides are sorted first, so their order on the command line does not matter.
    """
    patterns = [str(p) for p in (exclude or ())]
    kept = sorted(str(o) for o in (overrides or ()) if not _excluded(_override_key(str(o)), patterns))
    if not kept:
        return ""
    return "-" + hashlib.sha256("\n".join(kept).encode()).hexdigest()[:8]


def register_resolvers() -> None:
    """Make ``${adapt_run_suffix:overrides,exclude_keys}`` available (idempotent)."""
    if not OmegaConf.has_resolver(RUN_SUFFIX):
        OmegaConf.register_new_resolver(RUN_SUFFIX, run_suffix)
