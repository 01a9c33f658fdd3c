"""Grid values: the coordinates of a job (task, model, mode, shots, seed) and the paper's rules on them.

The few-shot protocol (glip_spec.md section 4) is not a Cartesian product: zero-shot is evaluated
once per task and model and full data ("all") runs once, while 1/3/5/10-shot runs once per seed.
:func:`point_skip_reason` is the single statement of that rule; the data layer, the sweeper, the
job, results.json and the report all speak in these units, so this module imports nothing of adapt.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ZERO_MODE = "zero"
ALL_SHOTS = "all"
# The seed that the once-only runs (zero-shot, full data) use when the sweep yaml does not say;
# 3 is the first of the official few-shot seeds 3/30/300 (glip_spec.md 4.5).
DEFAULT_CANONICAL_SEED = 3

Shots = int | str


@dataclass(frozen=True)
class GridPoint:
    """One job of a sweep, in the units results.json and the report use."""

    task: str
    model: str
    mode: str
    shots: Shots
    seed: int

    @classmethod
    def from_fields(cls, values: Mapping[str, Any]) -> GridPoint:
        """A point from its five fields as a record or config holds them (shots normalised)."""
        return cls(
            task=str(values["task"]),
            model=str(values["model"]),
            mode=str(values["mode"]),
            shots=normalize_shots(values["shots"]),
            seed=int(values["seed"]),
        )


def normalize_shots(value: Any) -> Shots:
    """A shots value in the one form results.json, the data layer and the report use: an int >= 0, or "all".

    The config's `shots` is an int or "all"; records and older folder names also give strings
    ("5", "'5'", "5shot"), which must compare equal when the report matches jobs to the grid.
    """
    if not isinstance(value, bool) and isinstance(value, int) and value >= 0:
        return value
    text = "" if isinstance(value, bool) else str(value).strip().strip("'\"").lower()
    if text in ("all", "full"):
        return ALL_SHOTS
    digits = text.removeprefix("shots").removeprefix("shot").removesuffix("shots").removesuffix("shot")
    if digits.isdigit():
        return int(digits)
    raise ValueError(
        f"shots={value} is not a number of labelled images per class: "
        "use 0 (zero-shot), a positive integer or all"
    )


def shots_sort_key(shots: Shots) -> tuple[int, int]:
    """Order shots the way the paper's tables do: 0, 1, 3, 5, 10, then all."""
    return (1, 0) if shots == ALL_SHOTS else (0, int(shots))


# The order the report and the cost tables list modes in; others follow, by name.
MODE_ORDER = (ZERO_MODE, "prompt", "linear", "full", "lora")


def mode_sort_key(mode: str) -> tuple[int, str]:
    """Order modes the way the paper's tables do: zero-shot, prompt, linear, full, then the rest."""
    return (MODE_ORDER.index(mode), "") if mode in MODE_ORDER else (len(MODE_ORDER), mode)


def point_skip_reason(
    point: GridPoint, canonical_seed: int = DEFAULT_CANONICAL_SEED, evaluates_only: bool | None = None
) -> str | None:
    """Why `point` is a redundant corner of the product grid, or None if it must run.

    This is the single statement of the paper's protocol; the job, the sweeper and the report's
    expected grid all use it, so they cannot disagree about which jobs should exist.
    ``evaluates_only`` says whether the point's mode trains nothing (default: the mode is ``zero``).
    """
    zero_shot = point.mode == ZERO_MODE if evaluates_only is None else evaluates_only
    if zero_shot:
        if point.shots != 0:
            return "zero-shot is evaluated once per task and model, at shots=0"
        if point.seed != canonical_seed:
            return f"zero-shot is evaluated once per task and model, with seed {canonical_seed}"
        return None
    if point.shots == 0:
        return "shots=0 is the zero-shot evaluation, which runs as mode=zero"
    if point.shots == ALL_SHOTS and point.seed != canonical_seed:
        return f"full-data runs once, with seed {canonical_seed}"
    return None
