"""plots/: AP against shots per mode, ours solid with error bars, the paper's dashed."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from adapt.grid import ZERO_MODE, Shots
from adapt.report.aggregate import ModelReport
from adapt.report.paper import PaperReference
from adapt.report.render import paper_mode


def _plot_series(
    mr: ModelReport, mode: str, xs: Sequence[Shots], value: Any
) -> tuple[list[int], list[float], list[float]]:
    pos, ys, errs = [], [], []
    for i, s in enumerate(xs):
        got = value(paper_mode(mode, s, mr), s)
        if got is None or got[0] is None:
            continue
        pos.append(i)
        ys.append(got[0])
        errs.append(got[1] or 0.0)
    return pos, ys, errs


def plot_report(mr: ModelReport, paper: PaperReference, out_dir: Path, ddof: int = 0) -> list[Path]:
    """AP against shots per mode: the suite average, and one panel per dataset.

    Shots sit at evenly spaced positions (0, 1, 3, 5, 10, all) as in the paper's figures, each mode
    starts from the shared zero-shot point, and the paper's curve for the same mode is dashed.
    """
    import matplotlib

    matplotlib.use("Agg")
    out_dir.mkdir(parents=True, exist_ok=True)
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in mr.model)
    return [
        _plot_average(mr, paper, out_dir / f"{safe}_average.png"),
        _plot_per_dataset(mr, paper, out_dir / f"{safe}_per_dataset.png", ddof),
    ]


Series = Callable[[str, Shots], "tuple[float | None, float | None] | None"]


def _modes(mr: ModelReport) -> list[str]:
    return [m for m in mr.modes if m != ZERO_MODE] or [ZERO_MODE]


def _draw(ax: Any, mr: ModelReport, ours: Series, ref: Series, title: str) -> None:
    """One panel: each mode's measured curve (error bars) and, dashed, the paper's."""
    modes = _modes(mr)
    for i, mode in enumerate(modes):
        color = f"C{i}"
        pos, ys, errs = _plot_series(mr, mode, mr.shots, ours)
        if pos:
            ax.errorbar(pos, ys, yerr=errs, color=color, marker="o", ms=4, capsize=2, label=mode)
        if mr.paper_model:
            pos, ys, _ = _plot_series(mr, mode, mr.shots, ref)
            if pos:
                ax.plot(pos, ys, color=color, ls="--", marker="x", ms=4, alpha=0.8, label=f"{mode} (paper)")
    ax.set_xticks(range(len(mr.shots)), [str(s) for s in mr.shots])
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)


def _plot_average(mr: ModelReport, paper: PaperReference, path: Path) -> Path:
    import matplotlib.pyplot as plt

    def ours(mode: str, s: Shots) -> tuple[float | None, float | None] | None:
        avg = mr.averages.get((mode, str(s)))
        return (avg.mean, avg.std) if avg else None

    def ref(mode: str, s: Shots) -> tuple[float, float | None] | None:
        return paper.headline(mr.paper_model, mode, s)

    fig, ax = plt.subplots(figsize=(6, 4.2))
    _draw(ax, mr, ours, ref, f"{mr.model}: {mr.suite} average AP")
    ax.set_xlabel("shots per category")
    ax.set_ylabel("AP")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _plot_per_dataset(mr: ModelReport, paper: PaperReference, path: Path, ddof: int) -> Path:
    import matplotlib.pyplot as plt

    ncols = min(4, len(mr.tasks))
    nrows = math.ceil(len(mr.tasks) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 2.6 * nrows), squeeze=False)
    for ax, task in zip(axes.flat, mr.tasks, strict=False):

        def ours(mode: str, s: Shots, task: str = task) -> tuple[float, float | None] | None:
            cell = mr.cells.get((task, mode, s))
            return (cell.mean, cell.std(ddof)) if cell and cell.n else None

        def ref(mode: str, s: Shots, task: str = task) -> tuple[float, None] | None:
            value = paper.dataset(mr.paper_model, mode, s, mr.paper_key(task))
            return None if value is None else (value, None)

        _draw(ax, mr, ours, ref, mr.label(task))
    for ax in list(axes.flat)[len(mr.tasks) :]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=7)
    fig.suptitle(f"{mr.model}: AP against shots per dataset", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
