"""The end-of-job printout: an AP table and where the results and the export are.

It goes to the console and into the run's ``run.log`` (Hydra's file handler), so the folder keeps
what the user saw. Paths are printed unwrapped: when stdout is not a terminal rich assumes 80
columns and would break a long path mid-word, and a path must stay copyable.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from adapt.runs.grounding import is_grounding_record, print_recall_tables


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{float(value):.2f}"


def to_log_files(text: str, level: int = logging.INFO, name: str = __name__) -> None:
    """Write ``text`` to the root logger's file handlers only (run.log), not to the console.

    For what the console already shows in its own form (the summary table, an error printed to
    stderr, a traceback Hydra prints): run.log gets it once, the console not twice.
    """
    record = logging.getLogger(name).makeRecord(name, level, __file__, 0, text, (), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and record.levelno >= handler.level:
            handler.handle(record)


def print_summary(
    results: Mapping[str, Any], results_path: Path, export_dir: Path | None, console: Console | None = None
) -> None:
    """Print val/test AP (percent, as in the paper) and the output paths; the same text to run.log."""
    console = console or Console()
    _print(results, results_path, export_dir, console)
    copy = Console(file=io.StringIO(), width=max(console.width, 100), color_system=None)
    _print(results, results_path, export_dir, copy)
    to_log_files("run summary\n" + copy.file.getvalue().rstrip())  # type: ignore[attr-defined]


def _print(results: Mapping[str, Any], results_path: Path, export_dir: Path | None, console: Console) -> None:
    if is_grounding_record(results):
        print_recall_tables(results, console)  # phrase grounding: recalls, not AP
    else:
        _print_ap(results, console)
    _print_footer(results, results_path, export_dir, console)


def _print_ap(results: Mapping[str, Any], console: Console) -> None:
    test = results.get("test") or {}
    keys = ("task", "model", "mode", "shots", "seed")
    title = " | ".join(f"{k}={results.get(k)}" for k in keys)
    table = Table(title=title)
    before = results.get("test_before_training")  # the weights as loaded (zero-shot), when tested
    if before:
        table.add_column("weights")
    for column in ("best val AP", "test AP", "AP50", "AP75"):
        table.add_column(column, justify="right")
    if before:
        table.add_row("before training", "-", *(_fmt(before.get(k)) for k in ("ap", "ap50", "ap75")))
    table.add_row(
        *(["after training"] if before else []),
        _fmt(results.get("best_val_ap")),
        _fmt(test.get("ap")),
        _fmt(test.get("ap50")),
        _fmt(test.get("ap75")),
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


def _print_footer(
    results: Mapping[str, Any], results_path: Path, export_dir: Path | None, console: Console
) -> None:
    params = results.get("params") or {}
    console.print(
        f"trainable parameters: {params.get('trainable', 0):,} of {params.get('total', 0):,}; "
        f"wall time {results.get('wall_time_s')} s; peak memory {results.get('peak_memory_mb')} MiB",
        soft_wrap=True,
    )
    console.print(f"results: {results_path}", soft_wrap=True, markup=False, highlight=False)
    if export_dir is not None:
        console.print(f"export:  {export_dir}", soft_wrap=True, markup=False, highlight=False)
