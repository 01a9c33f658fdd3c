"""Protocol arithmetic: dataset sizes, shots recipes and the sweep's runs, turned into steps and images.

Plain numbers in, plain numbers out; nothing is measured here. The grid of runs comes from the
sweep yaml expanded as adapt's sweeper expands it (`adapt.runs.sweep.planned_points`), and the steps per
evaluation period from the formula the training job runs by
(`adapt.train.datamodule.steps_per_period`).
"""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from adapt.grid import ZERO_MODE, GridPoint, Shots, normalize_shots, shots_sort_key
from adapt.runs.sweep import planned_points
from adapt.train.datamodule import steps_per_period

HERE = Path(__file__).resolve().parent
SIZES_CSV = HERE / "odinw13_sizes.csv"
CONF = Path(str(files("adapt").joinpath("conf")))
SWEEP_YAML = CONF / "sweep" / "odinw13.yaml"


@dataclass(frozen=True)
class TaskSize:
    """One ODinW-13 dataset (glip_spec.md 4.1, paper Table 9): classes and images per split."""

    task: str
    dataset: str
    classes: int
    train: int
    val: int
    test: int
    notes: str = ""


def load_sizes(path: str | Path = SIZES_CSV) -> list[TaskSize]:
    with Path(path).open(newline="", encoding="utf-8") as f:
        return [
            TaskSize(
                task=row["task"],
                dataset=row["dataset"],
                classes=int(row["classes"]),
                train=int(row["train"]),
                val=int(row["val"]),
                test=int(row["test"]),
                notes=row.get("notes") or "",
            )
            for row in csv.DictReader(f)
        ]


@dataclass(frozen=True)
class ShotsRecipe:
    """A row of ``conf/recipe/official.yaml``: set copies per period, max periods, early-stop patience."""

    shots: Shots
    copies: int
    epochs: int
    stop_patience: int

    @property
    def min_evaluations(self) -> int:
        """Fewest evaluations a run can make: the first sets the best, then ``stop_patience`` worse ones."""
        return min(self.stop_patience + 1, self.epochs) if self.stop_patience > 0 else self.epochs

    @property
    def max_evaluations(self) -> int:
        return self.epochs


def load_shots_recipes() -> dict[Shots, ShotsRecipe]:
    """The recipe's per-shots rows, from the config as the job composes it."""
    from omegaconf import OmegaConf

    from adapt.config import compose_config

    recipes: dict[Shots, ShotsRecipe] = {}
    table: Any = OmegaConf.to_container(compose_config().recipe.by_shots)
    for key, data in table.items():
        shots = normalize_shots(key)
        recipes[shots] = ShotsRecipe(
            shots=shots,
            copies=int(data["copies"]),
            epochs=int(data["epochs"]),
            stop_patience=int(data["stop_patience"]),
        )
    return dict(sorted(recipes.items(), key=lambda kv: shots_sort_key(kv[0])))


def planned_runs(modes: Sequence[str] | None = None, sweep_yaml: str | Path = SWEEP_YAML) -> list[GridPoint]:
    """The runs of the sweep yaml (for one model), with its modes replaced by `modes` when given."""
    overrides = [f"mode={','.join(modes)}"] if modes else []
    return planned_points(sweep_yaml, "model", overrides)


def runs_per_task(points: Iterable[GridPoint]) -> dict[tuple[str, Shots], int]:
    """(mode, shots) -> how many runs (seeds) one task gets; every task must get the same."""
    per_task: dict[str, Counter[tuple[str, Shots]]] = defaultdict(Counter)
    for p in points:
        per_task[p.task][(p.mode, p.shots)] += 1
    shapes = {tuple(sorted(c.items(), key=str)) for c in per_task.values()}
    if len(shapes) > 1:
        raise ValueError("the sweep's tasks get different runs; the cost table assumes one grid per task")
    return dict(next(iter(per_task.values()), Counter()))


def fewshot_images(k: int, classes: int) -> int:
    """Training (and val) images of a K-shot split, at most: K per class (fewer when images share classes)."""
    return k * classes


@dataclass(frozen=True)
class PeriodCounts:
    """Per shots setting, summed over tasks: steps per evaluation period and images per evaluation."""

    steps: int
    val_images: int


def task_period(size: TaskSize, recipe: ShotsRecipe, batch: int) -> PeriodCounts:
    """Steps per period and val images per evaluation of one task under one shots recipe.

    Zero-shot has no training; its single evaluation uses the whole val split, as full data does.
    A K-shot run validates on the K-shot val split (not copied: adapt evaluates it once per period).
    """
    if recipe.shots == 0:
        return PeriodCounts(steps=0, val_images=size.val)
    if recipe.shots == "all":
        return PeriodCounts(steps=steps_per_period(size.train, recipe.copies, batch), val_images=size.val)
    n = fewshot_images(int(recipe.shots), size.classes)
    return PeriodCounts(steps=steps_per_period(n, recipe.copies, batch), val_images=n)


def period_counts(
    sizes: Sequence[TaskSize], recipes: Mapping[Shots, ShotsRecipe], batch: int
) -> dict[Shots, PeriodCounts]:
    out = {}
    for shots, recipe in recipes.items():
        per_task = [task_period(s, recipe, batch) for s in sizes]
        out[shots] = PeriodCounts(sum(p.steps for p in per_task), sum(p.val_images for p in per_task))
    return out


@dataclass(frozen=True)
class JobWork:
    """What one run does: optimiser steps and evaluated images (val every period, then test once)."""

    task: str
    mode: str
    shots: Shots
    runs: int  # identical runs (seeds)
    evaluations: float
    steps: float
    eval_images: float


def sweep_work(
    sizes: Sequence[TaskSize],
    recipes: Mapping[Shots, ShotsRecipe],
    runs: Mapping[tuple[str, Shots], int],
    evaluations: Callable[[str, Shots], float],
    batch: int,
) -> list[JobWork]:
    """Every (task, mode, shots) of the sweep with its work; ``evaluations(mode, shots)`` is E.

    A zero-shot run evaluates val once and test once; a training run trains E periods, validates
    after each, then tests its best weights once.
    """
    work = []
    for (mode, shots), n in runs.items():
        recipe = recipes[shots]
        for size in sizes:
            period = task_period(size, recipe, batch)
            e = 1.0 if mode == ZERO_MODE else float(evaluations(mode, shots))
            steps = 0.0 if mode == ZERO_MODE else period.steps * e
            work.append(JobWork(size.task, mode, shots, n, e, steps, period.val_images * e + size.test))
    return work


@dataclass(frozen=True)
class Totals:
    jobs: int
    steps: dict[str, float]
    eval_images: float


def totals(work: Iterable[JobWork]) -> Totals:
    steps: dict[str, float] = defaultdict(float)
    jobs, images = 0, 0.0
    for w in work:
        jobs += w.runs
        images += w.runs * w.eval_images
        if w.mode != ZERO_MODE:
            steps[w.mode] += w.runs * w.steps
    return Totals(jobs=jobs, steps=dict(steps), eval_images=images)


def job_cost(w: JobWork, per_step: Mapping[str, float], per_image: float, per_job: float = 0.0) -> float:
    """Cost of one run of ``w`` (seconds, or FLOPs with per_job 0)."""
    step = per_step.get(w.mode, 0.0) if w.mode != ZERO_MODE else 0.0
    return w.steps * step + w.eval_images * per_image + per_job


def sweep_cost(
    work: Iterable[JobWork], per_step: Mapping[str, float], per_image: float, per_job: float = 0.0
) -> tuple[float, float]:
    """(total over all runs, the longest single run): seconds from times, FLOPs from FLOP counts."""
    total, longest = 0.0, 0.0
    for w in work:
        one = job_cost(w, per_step, per_image, per_job)
        total += w.runs * one
        longest = max(longest, one)
    return total, longest


def wall_clock(total: float, longest: float, devices: int) -> float:
    """Wall-clock on ``devices`` devices, perfectly packed: total/devices, but never below the longest run."""
    return max(total / devices, longest)


def scale_weights(n_scales: int, batch: int) -> list[float]:
    """P(a batch pads to the i-th smallest of n training scales), each image drawing uniformly.

    A batch pads to its largest image, so with images of one aspect ratio its size is the max of
    ``batch`` uniform draws: P(max <= i) = (i/n)^batch.
    """
    return [((i + 1) / n_scales) ** batch - (i / n_scales) ** batch for i in range(n_scales)]


def timed_scale_weights(timed: Sequence[int], recipe: Sequence[int], batch: int) -> list[float]:
    """The recipe's batch-max weights of the scales actually timed (renormalised by ``weighted``)."""
    full = dict(zip(sorted(recipe), scale_weights(len(recipe), batch), strict=True))
    if all(s in full for s in timed):
        return [full[s] for s in timed]
    return scale_weights(len(timed), batch)


def weighted(values: Sequence[float], weights: Sequence[float]) -> float:
    return sum(v * w for v, w in zip(values, weights, strict=True)) / sum(weights)
