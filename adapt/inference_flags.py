"""The size and inference flags that ``adapt.predict`` and ``python -m adapt.deploy export`` share.

Each flag overrides one key of the model config's test-time sections (``input``, ``inference``);
unset, the export's recorded value applies, else the model config's. One table, so the two CLIs
cannot drift apart. Torch-free: the deploy CLI imports it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

# flag -> (config section, key, type, what it sets)
SETTINGS: dict[str, tuple[str, str, type, str]] = {
    "--min-size": ("input", "min_size_test", int, "short side of the resized image"),
    "--max-size": ("input", "max_size_test", int, "long-side cap of the resized image"),
    "--score-threshold": ("inference", "score_threshold", float, "minimum detection score"),
    "--pre-nms-top-n": ("inference", "pre_nms_top_n", int, "candidates per level before NMS"),
    "--nms-threshold": ("inference", "nms_threshold", float, "IoU of class-wise NMS"),
    "--detections-per-image": ("inference", "detections_per_image", int, "detections kept per image"),
}


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """Every flag of :data:`SETTINGS` on ``parser``, defaulting to None (not given)."""
    for flag, (_, _, kind, what) in SETTINGS.items():
        parser.add_argument(flag, type=kind, help=f"{what} (default: the export's, else the model's)")


def apply_setting_flags(cfg: Any, args: argparse.Namespace, prog: str, from_export: bool) -> None:
    """Set each given flag's key on the model config ``cfg``; over an export's recorded value, say so
    on stderr (detections then differ from the run's)."""
    for flag, (section, key, _, _) in SETTINGS.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is None:
            continue
        node = getattr(cfg, section)
        if from_export and value != getattr(node, key):
            print(
                f"{prog}: note: {flag} {value} replaces the export's {key}={getattr(node, key)}; "
                "detections will differ from the run's",
                file=sys.stderr,
            )
        setattr(node, key, value)
