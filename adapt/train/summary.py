"""The end-of-job printout: an AP table and where the results and the export are."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{float(value):.2f}"


def print_summary(
    results: Mapping[str, Any], results_path: Path, export_dir: Path | None, console: Console | None = None
) -> None:
    """Print val/test AP (percent, as in the paper) and the output paths."""
    console = console or Console()
    test = results.get("test") or {}
    keys = ("task", "model", "mode", "shots", "seed")
    title = " | ".join(f"{k}={results.get(k)}" for k in keys)
    table = Table(title=title)
    for column in ("best val AP", "test AP", "AP50", "AP75"):
        table.add_column(column, justify="right")
    table.add_row(
        _fmt(results.get("best_val_ap")), _fmt(test.get("ap")), _fmt(test.get("ap50")), _fmt(test.get("ap75"))
    )
    console.print(table)
    per_category = test.get("per_category") or {}
    if len(per_category) > 1:
        cats = Table(title="test AP per category")
        cats.add_column("category")
        cats.add_column("AP", justify="right")
        for name, ap in per_category.items():
            cats.add_row(str(name), _fmt(ap))
        console.print(cats)
    params = results.get("params") or {}
    console.print(
        f"trainable parameters: {params.get('trainable', 0):,} of {params.get('total', 0):,}; "
        f"wall time {results.get('wall_time_s')} s; peak memory {results.get('peak_memory_mb')} MiB"
    )
    console.print(f"results: {results_path}")
    if export_dir is not None:
        console.print(f"export:  {export_dir}")
