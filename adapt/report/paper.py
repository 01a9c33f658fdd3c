"""The GLIP paper's ODinW-13 numbers (benchmarks/odinw/paper_*.csv), next to which ours are shown.

A run names its paper reference itself: the task config's ``name`` is the paper's dataset column
(``Aquarium``) and the model config's ``paper`` the paper's model row (``GLIP-T``); both reach the
report through results.json's config and the sweep manifest.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

from adapt.grid import Shots, normalize_shots

# The 13 datasets in the paper's column order (glip_spec.md 5.3): the suite the average is over.
ODINW13_KEYS: tuple[str, ...] = (
    "PascalVOC",
    "AerialDrone",
    "Aquarium",
    "Rabbits",
    "EgoHands",
    "Mushrooms",
    "Packages",
    "Raccoon",
    "Shellfish",
    "Vehicles",
    "Pistols",
    "Pothole",
    "Thermal",
)
PAPER_MODELS = ("GLIP-T (A)", "GLIP-T (B)", "GLIP-T (C)", "GLIP-T", "GLIP-L")
PER_DATASET_CSV = "paper_per_dataset.csv"
AVERAGE_CSV = "paper_average.csv"


@dataclass
class PaperReference:
    """The paper's ODinW-13 numbers: per dataset (Tables 14-16) and averages ± std (Tables 11-14)."""

    per_dataset: dict[tuple[str, str, Shots], dict[str, float]] = field(default_factory=dict)
    average: dict[tuple[str, str, Shots], tuple[float, float | None]] = field(default_factory=dict)
    source: Path | None = None

    def dataset(self, model: str | None, mode: str, shots: Shots, key: str | None) -> float | None:
        if model is None or key is None:
            return None
        return self.per_dataset.get((model, mode, shots), {}).get(key)

    def table_average(self, model: str | None, mode: str, shots: Shots) -> float | None:
        """The Avg column of the per-dataset table (Tables 14-16), consistent with its cells."""
        if model is None:
            return None
        return self.per_dataset.get((model, mode, shots), {}).get("avg")

    def headline(self, model: str | None, mode: str, shots: Shots) -> tuple[float, float | None] | None:
        """The average ± std of Tables 11-14 (the std exists only there)."""
        return None if model is None else self.average.get((model, mode, shots))


def paper_data_dir() -> Path | None:
    """Where the shipped paper CSVs are: $ADAPT_PAPER_DIR, the package, or the source checkout."""
    candidates = []
    if os.environ.get("ADAPT_PAPER_DIR"):
        candidates.append(Path(os.environ["ADAPT_PAPER_DIR"]))
    package = Path(__file__).resolve().parents[1]
    candidates += [package / "resources" / "paper", package.parent / "benchmarks" / "odinw"]
    for candidate in candidates:
        if (candidate / PER_DATASET_CSV).is_file():
            return candidate
    return None


def _float_or_none(text: str | None) -> float | None:
    text = (text or "").strip()
    return float(text) if text else None


def load_paper(directory: str | os.PathLike[str] | None = None) -> PaperReference:
    """Read the paper's tables; an empty reference when no data is found (the report says so)."""
    root = Path(directory) if directory is not None else paper_data_dir()
    ref = PaperReference(source=root)
    if root is None:
        return ref
    with (root / PER_DATASET_CSV).open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            key = (row["model"], row["mode"], normalize_shots(row["shots"]))
            values = {k: float(row[k]) for k in (*ODINW13_KEYS, "avg") if row.get(k, "").strip()}
            ref.per_dataset[key] = values
    avg_path = root / AVERAGE_CSV
    if avg_path.is_file():
        with avg_path.open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                key = (row["model"], row["mode"], normalize_shots(row["shots"]))
                ref.average[key] = (float(row["avg"]), _float_or_none(row.get("std")))
    return ref
