"""What one ODinW-13 sweep costs: measure t_step, t_img and FLOPs, then turn them into device-hours.

    python benchmarks/odinw/cost.py --model glip_t glip_l --device cuda --json cost.json
    python benchmarks/odinw/cost.py --model glip_t --sweep multirun/odinw13/glip_t   # E from a sweep
    python benchmarks/odinw/cost.py --model glip_t --skip-timing --peak-tflops 989   # FLOPs only

Measured (random, seeded weights: speed does not depend on them), on ``--device``:

* ``t_step(mode)``: one optimiser step as the job runs it: a Lightning ``Trainer`` built by
  ``adapt.train.job.build_trainer`` from ``conf/trainer/default.yaml`` (precision auto: 16-mixed
  on CUDA, 32-true on CPU; gradient clip 1.0), fitting ``adapt.train.module.GLIPAdaptation`` with
  the mode's policy (``adapt.train.modes``) and optimiser (``adapt.train.optim`` via
  ``configure_optimizers``, the mode's ``conf/mode/*.yaml``). Timed from Lightning's
  ``on_train_batch_start`` to ``on_train_batch_end`` (forward with targets, loss, backward,
  clipping, AdamW step; loading and the host-to-device copy are outside). Batches are synthetic
  images passed through adapt's own training transform (multi-scale resize, flip) and collate.
  Each training scale (short side 480..800, long side capped at 1333) is timed on its own, after
  ``--warmup`` steps; the reported t_step weights the per-scale medians by how often a batch of
  ``--batch`` images pads to that scale (every image draws its scale uniformly; the batch pads to
  its largest draw).
* ``t_img``: seconds per image of ``Trainer.validate`` batches (``--eval-batch`` images at the
  official test size 800 x 1333, forward and post-processing, the job's ``validation_step``).
* FLOPs per training step and per evaluated image, counted by ``torch.utils.flop_counter``.

It then combines them with the protocol (``conf/sweep/odinw13.yaml``, ``conf/shots/*.yaml``) and
the dataset sizes (``odinw13_sizes.csv``, glip_spec.md 4.1) into the README's GPU-hours table, with
the number of evaluation periods E either read from a finished sweep (``--sweep``) or bounded by
the protocol (early-stop patience + 1 <= E <= epochs).
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import re
import statistics
import sys
import tempfile
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from importlib.resources import files
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml

from adapt.atomic import write_json
from adapt.sweep import ALL_SHOTS, ZERO_MODE, GridPoint, normalize_shots, point_skip_reason, shots_sort_key
from adapt.train.results import machine_info

HERE = Path(__file__).resolve().parent
SIZES_CSV = HERE / "odinw13_sizes.csv"
CONF = Path(str(files("adapt").joinpath("conf")))
SWEEP_YAML = CONF / "sweep" / "odinw13.yaml"
TRAIN_MODES = ("prompt", "linear", "full")
MEASURABLE_MODES = (*TRAIN_MODES, "lora")
# Example peak for --peak-tflops: NVIDIA's datasheet figure for H100 SXM, dense FP16/BF16 tensor
# cores (no sparsity). A datasheet number, not a measurement.
H100_SXM_DENSE_TFLOPS = 989.0
OFFICIAL_TEST_HW = (800, 1333)
# Synthetic targets: boxes per training image (the loss cost hardly depends on it).
BOXES_PER_IMAGE = 3

Shots = int | str


# ================================================================================================
# Protocol data: dataset sizes, shots recipes, the sweep grid (all read from the repo)


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
    """``conf/shots/<k>.yaml``: copies of the training set per period, max periods, early-stop patience."""

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


def load_shots_recipes(conf: str | Path = CONF) -> dict[Shots, ShotsRecipe]:
    recipes: dict[Shots, ShotsRecipe] = {}
    for path in sorted((Path(conf) / "shots").glob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        shots = normalize_shots(data["k"])
        recipes[shots] = ShotsRecipe(
            shots=shots,
            copies=int(data["copies"]),
            epochs=int(data["epochs"]),
            stop_patience=int(data["stop_patience"]),
        )
    return dict(sorted(recipes.items(), key=lambda kv: shots_sort_key(kv[0])))


@dataclass(frozen=True)
class SweepGrid:
    """The product a protocol sweep spans; ``adapt.sweep.point_skip_reason`` says which points run."""

    tasks: tuple[str, ...]
    shots: tuple[Shots, ...]
    modes: tuple[str, ...]
    seeds: tuple[int, ...]
    canonical_seed: int = 3


def _sweep_values(text: Any) -> list[str]:
    return [v.strip().strip("'\"") for v in str(text).split(",") if v.strip()]


def load_sweep_grid(path: str | Path = SWEEP_YAML) -> SweepGrid:
    """The grid of a ``conf/sweep/*.yaml`` (its ``hydra.sweeper.params``)."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    params = data["hydra"]["sweeper"]["params"]
    return SweepGrid(
        tasks=tuple(_sweep_values(params["task"])),
        shots=tuple(normalize_shots(v) for v in _sweep_values(params["shots"])),
        modes=tuple(_sweep_values(params["mode"])),
        seeds=tuple(int(v) for v in _sweep_values(params["seed"])),
        canonical_seed=int((data.get("sweep") or {}).get("canonical_seed", 3)),
    )


def runs_per_task(grid: SweepGrid) -> dict[tuple[str, Shots], int]:
    """(mode, shots) -> how many runs (seeds) one task gets under the protocol's skip rules."""
    runs: dict[tuple[str, Shots], int] = {}
    for mode in grid.modes:
        for shots in grid.shots:
            n = sum(
                point_skip_reason(GridPoint("t", "m", mode, shots, seed), grid.canonical_seed) is None
                for seed in grid.seeds
            )
            if n:
                runs[(mode, shots)] = n
    return runs


# ================================================================================================
# Arithmetic: counts -> steps, images, seconds (plain numbers in, plain numbers out)


def steps_per_period(images: int, copies: int, batch: int) -> int:
    """Optimiser steps in one evaluation period (``TaskDataModule.steps_per_epoch``): copies*N // batch."""
    return max(images * copies // batch, 1)


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
    if recipe.shots == ALL_SHOTS:
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


# ================================================================================================
# A finished sweep: E = len(val_history), wall times


@dataclass
class SweepStats:
    """Complete runs of one model in a sweep folder."""

    path: str
    model: str | None
    statuses: dict[str, int] = field(default_factory=dict)
    evaluations: dict[tuple[str, Shots], list[int]] = field(default_factory=dict)
    wall_time_s: float = 0.0
    wall_by_mode: dict[str, float] = field(default_factory=dict)
    zero_shot_wall: dict[str, float] = field(default_factory=dict)

    def mean_evaluations(self, mode: str, shots: Shots) -> float | None:
        values = self.evaluations.get((mode, shots))
        return statistics.fmean(values) if values else None

    def evaluations_by_shots(self) -> dict[Shots, list[int]]:
        out: dict[Shots, list[int]] = defaultdict(list)
        for (mode, shots), values in self.evaluations.items():
            if mode != ZERO_MODE:
                out[shots] += values
        return {k: sorted(out[k]) for k in sorted(out, key=shots_sort_key)}


def read_sweep(sweep_dir: str | Path, model: str | None = None) -> SweepStats:
    """E per (mode, shots) and wall times of the complete runs (of ``model``) under ``sweep_dir``."""
    from adapt.report import collect_jobs
    from adapt.sweep import read_results

    jobs, _ = collect_jobs(sweep_dir)
    stats = SweepStats(path=str(sweep_dir), model=model)
    statuses: Counter[str] = Counter()
    evaluations: dict[tuple[str, Shots], list[int]] = defaultdict(list)
    by_mode: dict[str, float] = defaultdict(float)
    for job in jobs:
        if model is not None and job.point.model != model:
            continue
        statuses[job.status] += 1
        data = read_results(job.path) if job.path is not None and job.status == "complete" else None
        if data is None:
            continue
        wall = float(data.get("wall_time_s") or 0.0)
        stats.wall_time_s += wall
        by_mode[job.point.mode] += wall
        if job.point.mode == ZERO_MODE:
            stats.zero_shot_wall[job.point.task] = wall
        else:
            evaluations[(job.point.mode, job.point.shots)].append(len(data.get("val_history") or []))
    stats.statuses = dict(statuses)
    stats.evaluations = dict(evaluations)
    stats.wall_by_mode = dict(by_mode)
    return stats


def t_job_from_sweep(stats: SweepStats, sizes: Sequence[TaskSize]) -> tuple[str, float] | None:
    """The README's t_job: wall time of the zero-shot run on the dataset with the fewest eval images."""
    smallest = sorted(sizes, key=lambda s: s.val + s.test)
    for size in smallest:
        if size.task in stats.zero_shot_wall:
            return size.task, stats.zero_shot_wall[size.task]
    return None


# ================================================================================================
# Measuring: training steps, evaluated images, FLOPs


@dataclass
class Setup:
    """What to measure with (see the command-line help)."""

    device: str = "cpu"
    batch: int = 4
    eval_batch: int = 4
    train_scales: tuple[int, ...] = (480, 560, 640, 720, 800)
    recipe_scales: tuple[int, ...] = (480, 560, 640, 720, 800)
    max_size_train: int = 1333
    image_hw: tuple[int, int] = OFFICIAL_TEST_HW
    test_size: int = 800
    max_size_test: int = 1333
    test_hw: tuple[int, int] = OFFICIAL_TEST_HW
    warmup: int = 1
    reps: int = 3
    flops_meta: bool = True
    task: str = "odinw/pascalvoc"
    timing: bool = True
    flops: bool = True


@dataclass
class FlopCount:
    """FLOPs of one call, by op; ``uncounted``: matrix-sized or non-aten ops that ran without a formula."""

    total: float = 0.0
    by_op: dict[str, float] = field(default_factory=dict)
    uncounted: list[str] = field(default_factory=list)


def _deform_conv2d_flop(
    input_shape: Any, weight_shape: Any, *args: Any, out_shape: Any = None, **kw: Any
) -> int:
    """torchvision deform_conv2d as its GEMM (im2col columns x weight); bilinear sampling not counted."""
    cout, cin_per_group, kh, kw_ = weight_shape
    n, _, ho, wo = out_shape
    return 2 * n * cout * cin_per_group * kh * kw_ * ho * wo


def _deform_conv2d_backward_flop(
    grad_shape: Any, input_shape: Any, weight_shape: Any, *args: Any, out_shape: Any = None, **kw: Any
) -> int:
    """Backward: the two GEMMs (grad of the columns, grad of the weight); offset/mask grads not counted."""
    cout, cin_per_group, kh, kw_ = weight_shape
    n, _, ho, wo = grad_shape
    return 2 * 2 * n * cout * cin_per_group * kh * kw_ * ho * wo


def _cpu_sdpa_flop(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kw: Any) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward_flop(
    grad: Any, query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kw: Any
) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad, query, key, value)


# Names of ops that do matrix-sized work: one of these without a formula makes a count incomplete.
_HEAVY = re.compile(r"attention|conv|[._]mm|bmm|matmul|einsum|\.linear")


def flop_counter() -> tuple[Any, Any]:
    """A FlopCounterMode with the formulas torch lacks, and a mode recording heavy ops it cannot count.

    Added: torchvision's deform_conv2d (as its GEMM) and the CPU flash attention that
    scaled_dot_product_attention dispatches to on CPU (torch counts only the CUDA kernels).
    """
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    custom: dict[Any, Any] = {}
    for op, formula in (
        ("_scaled_dot_product_flash_attention_for_cpu", _cpu_sdpa_flop),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", _cpu_sdpa_backward_flop),
    ):
        if hasattr(aten, op):
            custom[getattr(aten, op)] = formula
    if hasattr(torch.ops, "torchvision") and hasattr(torch.ops.torchvision, "deform_conv2d"):
        custom[torch.ops.torchvision.deform_conv2d] = _deform_conv2d_flop
        custom[torch.ops.torchvision._deform_conv2d_backward] = _deform_conv2d_backward_flop
    counter = FlopCounterMode(display=False, custom_mapping=custom)
    known = {str(k) for k in counter.flop_registry}

    class Uncounted(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: set[str] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = str(func.overloadpacket)
            if name not in known and (not name.startswith("aten.") or _HEAVY.search(name)):
                self.ops.add(name.replace(".", "::", 1))
            return func(*args, **(kwargs or {}))

    return counter, Uncounted()


def count_flops(fn: Callable[[], Any]) -> FlopCount:
    counter, uncounted = flop_counter()
    with counter, uncounted:
        fn()
    by_op = {str(k): float(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return FlopCount(float(counter.get_total_flops()), by_op, sorted(uncounted.ops))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class BatchTimer(L.Callback):
    """Seconds of every training batch (start hook -> end hook) and every validation batch."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.train: list[float] = []
        self.val: list[float] = []
        self._start = 0.0

    def _now(self) -> float:
        _sync(self.device)
        return time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._start = self._now()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.train.append(self._now() - self._start)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._start = self._now()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.val.append(self._now() - self._start)


class SyntheticImages(torch.utils.data.Dataset):
    """Random images of ``hw`` with a few labelled boxes, through one of adapt's transforms.

    ``scale_of(i)`` picks the training scale of item i (None: the test transform). Items are a pure
    function of (seed, i), drawn under a private RNG.
    """

    def __init__(
        self,
        n: int,
        hw: tuple[int, int],
        classes: int,
        transform_of: Callable[[int], Any],
        seed: int = 0,
    ) -> None:
        self.n, self.hw, self.classes, self.transform_of, self.seed = n, hw, classes, transform_of, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, Any]]:
        from PIL import Image

        h, w = self.hw
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 100_003 + i)
            pixels = torch.randint(0, 256, (h, w, 3), dtype=torch.uint8).numpy()
            xy1 = torch.rand(BOXES_PER_IMAGE, 2) * torch.tensor([w * 0.6, h * 0.6])
            wh = (0.1 + 0.3 * torch.rand(BOXES_PER_IMAGE, 2)) * torch.tensor([w, h])
            boxes = torch.cat([xy1, (xy1 + wh).minimum(torch.tensor([w - 1.0, h - 1.0]))], dim=1)
            target = {
                "boxes": boxes,
                "labels": torch.randint(1, self.classes + 1, (BOXES_PER_IMAGE,)),
                "image_id": i,
                "orig_size": (h, w),
                "size": (h, w),
            }
            return self.transform_of(i)(Image.fromarray(pixels), target)


def _quiet_lightning() -> None:
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
    warnings.filterwarnings("ignore", message=r".*validation_step.*val_dataloader.*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")


def _trainer(setup: Setup, callbacks: list[L.Callback], root: Path) -> L.Trainer:
    """The job's Trainer (``adapt.train.job.build_trainer`` on ``conf/trainer/default.yaml``)."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    from omegaconf import OmegaConf

    from adapt.train.job import build_trainer

    t = OmegaConf.load(CONF / "trainer" / "default.yaml")
    t.accelerator = "gpu" if setup.device.startswith("cuda") else "cpu"
    t.progress_bar = False
    t.max_steps = None
    t.limit_eval_batches = None
    trainer = build_trainer(OmegaConf.create({"trainer": t}), root, callbacks, None, max_epochs=1)
    # Lightning adds a checkpoint callback by default; saving a full model is not part of a step.
    trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, ModelCheckpoint)]
    return trainer


def trainer_precision(device: str) -> str:
    from adapt.train.job import resolve_precision

    return resolve_precision({"accelerator": "gpu" if device.startswith("cuda") else "cpu"})


def trainer_defaults() -> dict[str, Any]:
    return yaml.safe_load((CONF / "trainer" / "default.yaml").read_text(encoding="utf-8"))


def _mode_cfg(mode: str) -> dict[str, Any]:
    return yaml.safe_load((CONF / "mode" / f"{mode}.yaml").read_text(encoding="utf-8"))


def build_module(
    model_name: str, mode: str, task: str, device: str = "cpu", use_checkpoint: bool = True
) -> Any:
    """GLIPAdaptation over a seeded random ``model_name`` with ``mode``'s policy, for ``task``'s prompt.

    On ``device="meta"`` the model is built without memory or arithmetic (for counting FLOPs).
    ``use_checkpoint`` pins the fusion's checkpointing (default: on, the official setting, so that
    counts and times do not depend on the free memory ``auto`` would look at).
    """
    from omegaconf import OmegaConf

    from adapt.data import build_task
    from adapt.model import GLIPConfig, build_glip
    from adapt.model.config import model_config
    from adapt.model.fusion import VLFuse
    from adapt.train.job import task_prompt
    from adapt.train.modes import build_policy
    from adapt.train.module import GLIPAdaptation

    cfg = GLIPConfig.from_dict(model_config(model_name)["arch"])
    if device == "meta":
        with torch.device("meta"):
            model = build_glip(cfg)
    else:
        model = build_glip(cfg)
    prompt = task_prompt(build_task(OmegaConf.load(CONF / "task" / f"{task}.yaml")), model)
    for fuse in model.modules():
        if isinstance(fuse, VLFuse):
            fuse.checkpoint_policy = fuse.use_checkpoint = use_checkpoint
    mode_cfg = _mode_cfg(mode)
    module = GLIPAdaptation(
        model, build_policy(mode_cfg), prompt, optimizer=mode_cfg.get("optimizer"), evaluator=_no_metrics
    )
    return module.to(device)


def _no_metrics(split: str, predictions: list[dict[str, Any]]) -> dict[str, Any]:
    return {"ap": 0.0}


def _transform(setup: Setup, scale: int | None) -> Any:
    from adapt.data import transforms_from_config

    if scale is None:
        return transforms_from_config(
            {"min_size_test": setup.test_size, "max_size_test": setup.max_size_test}, train=False
        )
    return transforms_from_config({"min_size_train": [scale], "max_size_train": setup.max_size_train}, True)


def _oom_types() -> tuple[type[BaseException], ...]:
    return (torch.OutOfMemoryError,) if hasattr(torch, "OutOfMemoryError") else (RuntimeError,)


def _free(device: str) -> None:
    import gc

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------
# FLOPs on meta tensors: shapes only, so GLIP-L counts in seconds on any machine. The loss and the
# post-processor look at values (which anchors are positive, which boxes pass the threshold), so
# they run for real, on CPU tensors of the head outputs' shapes; the loss's gradient goes back into
# the meta graph. tests/test_cost.py checks that this count equals the real step's on glip_mini.


def _real_like(t: torch.Tensor, grad: bool = False) -> torch.Tensor:
    return torch.randn(t.shape, dtype=torch.float32, requires_grad=grad)


class LossOnCPU(torch.nn.Module):
    """Stands in for ``GLIP.loss`` on a meta model: the real ATSS loss on CPU stand-ins of the outputs."""

    def __init__(self, loss: torch.nn.Module, anchors: torch.nn.Module, text_mask: torch.Tensor) -> None:
        super().__init__()
        self.inner, self.anchors = loss, anchors
        self.text_mask = text_mask

    def forward(self, bbox_reg, centerness, logits, anchors, targets, text_mask):
        metas = [*bbox_reg, *centerness, *logits]
        real = [_real_like(t, grad=True) for t in metas]
        n = len(bbox_reg)
        cpu_anchors = self.anchors([tuple(t.shape[-2:]) for t in bbox_reg], device=torch.device("cpu"))
        mask = self.text_mask[None].expand(text_mask.shape[0], -1)
        losses = self.inner(real[:n], real[n : 2 * n], real[2 * n :], cpu_anchors, targets, mask)
        losses["total"].backward()  # (autograd.grad trips FlopCounterMode's module hooks)
        grads = [r.grad for r in real]
        total = sum((m * g.to("meta")).sum() for m, g in zip(metas, grads, strict=True) if g is not None)
        return {**{k: torch.zeros((), device="meta") for k in losses}, "total": total}


class PostprocessOnCPU(torch.nn.Module):
    """Stands in for ``GLIP.postprocessor`` on a meta model: the real one on random CPU outputs."""

    def __init__(self, post: torch.nn.Module, anchors: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.anchors = post, anchors

    def forward(self, bbox_reg, centerness, logits, anchors, image_sizes, label_to_tokens):
        cpu_anchors = self.anchors([tuple(t.shape[-2:]) for t in bbox_reg], device=torch.device("cpu"))
        real = [[_real_like(t) for t in group] for group in (bbox_reg, centerness, logits)]
        return self.inner(*real, cpu_anchors, image_sizes, label_to_tokens)


@contextmanager
def _meta_compat() -> Iterator[None]:
    """Two value-or-device questions meta tensors cannot answer, answered as the real step would.

    * transformers skips BERT's attention mask when ``mask.all()``; GLIP pads every prompt to 256
      tokens, so the real answer is always "no";
    * ``torch.autocast(device_type="meta")`` does not exist (the deformable conv turns autocast off
      around itself); on meta there is no autocast to turn off.
    """
    from transformers import masking_utils

    skip_mask = masking_utils._ignore_bidirectional_mask_sdpa
    autocast = torch.autocast

    def meta_autocast(device_type: str, *args: Any, **kwargs: Any) -> Any:
        return nullcontext() if device_type == "meta" else autocast(device_type, *args, **kwargs)

    masking_utils._ignore_bidirectional_mask_sdpa = lambda *args, **kwargs: False
    torch.autocast = meta_autocast  # type: ignore[assignment]
    try:
        yield
    finally:
        masking_utils._ignore_bidirectional_mask_sdpa = skip_mask
        torch.autocast = autocast  # type: ignore[misc]


def train_step_flops(module: Any, batch: dict[str, Any], meta: bool) -> FlopCount:
    """FLOPs of one training step of ``module`` on ``batch`` (forward with targets, loss, backward).

    Real (``meta=False``): the module's own ``training_step``, on the module's device. Meta: the same
    calls without the step's value checks (a meta loss has no value to test for NaN).
    """
    module.train()
    if module.text_cached():
        with _meta_compat() if meta else nullcontext():
            module.text_features(1)  # the job encodes the fixed prompt once, before its first step
    if not meta:

        def step() -> None:
            module.training_step(batch, 0).backward()

        count = count_flops(step)
        module.zero_grad(set_to_none=True)
        return count
    model = module.model
    original = model.loss
    model.loss = LossOnCPU(original, model.anchor_generator, module.prompt.attention_mask)
    images = batch["images"].to("meta")

    def meta_step() -> None:
        text = module.text_features(images.shape[0], batch)
        losses = model(images, batch["image_sizes"], text=text, targets=batch["targets"])
        losses["total"].backward()

    try:
        with _meta_compat():
            return count_flops(meta_step)
    finally:
        model.loss = original
        module.zero_grad(set_to_none=True)


def eval_flops(module: Any, batch: dict[str, Any], meta: bool) -> FlopCount:
    """FLOPs of the job's ``validation_step`` on ``batch`` (forward and post-processing, no grad)."""
    module.eval()
    model = module.model
    original = model.postprocessor
    if meta:
        model.postprocessor = PostprocessOnCPU(original, model.anchor_generator)
        batch = {**batch, "images": batch["images"].to("meta")}

    def forward() -> None:
        with torch.no_grad():
            module.validation_step(batch, 0)

    try:
        with _meta_compat() if meta else nullcontext():
            return count_flops(forward)
    finally:
        model.postprocessor = original
        module._predictions = []


def _flop_module(model_name: str, mode: str, setup: Setup) -> Any:
    return build_module(model_name, mode, setup.task, "meta" if setup.flops_meta else setup.device)


def _on_flop_device(batch: dict[str, Any], setup: Setup) -> dict[str, Any]:
    return batch if setup.flops_meta else _to(batch, setup.device)


def measure_train(model_name: str, mode: str, setup: Setup) -> dict[str, Any]:
    """t_step and FLOPs per step of ``mode`` at every training scale (see the module docstring)."""
    from adapt.train.datamodule import GLIPCollate

    per_scale = setup.warmup + setup.reps
    scales = list(setup.train_scales)
    transforms = {s: _transform(setup, s) for s in scales}
    weights = timed_scale_weights(scales, setup.recipe_scales, setup.batch)
    out: dict[str, Any] = {"mode": mode, "scales": []}

    def dataset(module: Any) -> tuple[SyntheticImages, GLIPCollate]:
        data = SyntheticImages(
            len(scales) * per_scale * setup.batch,
            setup.image_hw,
            len(module.prompt.class_names),
            lambda i: transforms[scales[i // (per_scale * setup.batch)]],
        )
        return data, GLIPCollate(module.prompt, module.model.cfg.input)

    if setup.flops:
        module = _flop_module(model_name, mode, setup)
        data, collate = dataset(module)
        counts, padded = [], []
        for k in range(len(scales)):
            start = k * per_scale * setup.batch
            batch = collate([data[start + j] for j in range(setup.batch)])
            padded.append(list(batch["images"].shape[-2:]))
            counts.append(train_step_flops(module, _on_flop_device(batch, setup), setup.flops_meta))
        out["padded_hw"] = padded
        out["trainable_params"] = sum(p.numel() for p in module.model.parameters() if p.requires_grad)
        out["flops_per_scale"] = [c.total for c in counts]
        out["flops_by_op"] = _sum_by_op(counts, weights)
        out["uncounted_ops"] = sorted({op for c in counts for op in c.uncounted})
        out["flops_per_step"] = weighted([c.total for c in counts], weights)
        del module
        _free(setup.device)

    if setup.timing:
        try:
            out.update(_time_train(model_name, mode, setup, dataset, weights))
        except _oom_types() as exc:  # recorded, so that the other modes and the FLOPs still report
            out["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        _free(setup.device)
    return out


def _time_train(
    model_name: str, mode: str, setup: Setup, dataset: Callable[[Any], Any], weights: Sequence[float]
) -> dict[str, Any]:
    out: dict[str, Any] = {"scales": []}
    per_scale = setup.warmup + setup.reps
    scales = list(setup.train_scales)
    module = build_module(model_name, mode, setup.task)
    data, collate = dataset(module)
    out["trainable_params"] = sum(p.numel() for p in module.model.parameters() if p.requires_grad)
    loader = torch.utils.data.DataLoader(
        data, batch_size=setup.batch, shuffle=False, collate_fn=collate, drop_last=True
    )
    timer = BatchTimer(setup.device)
    if setup.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as root:
        trainer = _trainer(setup, [timer], Path(root))
        trainer.fit(module, train_dataloaders=loader)
    if len(timer.train) != len(scales) * per_scale:
        raise RuntimeError(f"timed {len(timer.train)} steps, expected {len(scales) * per_scale}")
    medians = []
    for k, scale in enumerate(scales):
        timed = timer.train[k * per_scale + setup.warmup : (k + 1) * per_scale]
        medians.append(statistics.median(timed))
        warm = timer.train[k * per_scale : k * per_scale + setup.warmup]
        out["scales"].append({"scale": scale, "warmup_s": warm, "times_s": timed})
    out["t_step_per_scale"] = medians
    out["t_step"] = weighted(medians, weights)
    out["precision"] = str(trainer.precision)
    if setup.device.startswith("cuda"):
        out["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def measure_eval(model_name: str, setup: Setup) -> dict[str, Any]:
    """t_img and FLOPs per evaluated image (zero-shot policy: the prompt is encoded once per job)."""
    from adapt.train.datamodule import GLIPCollate

    transform = _transform(setup, None)
    n = (setup.warmup + setup.reps) * setup.eval_batch
    out: dict[str, Any] = {}

    def dataset(module: Any) -> tuple[SyntheticImages, GLIPCollate]:
        classes = len(module.prompt.class_names)
        data = SyntheticImages(n, setup.test_hw, classes, lambda i: transform, seed=1)
        return data, GLIPCollate(module.prompt, module.model.cfg.input)

    if setup.flops:
        module = _flop_module(model_name, ZERO_MODE, setup)
        data, collate = dataset(module)
        batch = collate([data[i] for i in range(setup.eval_batch)])
        out["padded_hw"] = list(batch["images"].shape[-2:])
        count = eval_flops(module, _on_flop_device(batch, setup), setup.flops_meta)
        out["flops_per_image"] = count.total / setup.eval_batch
        out["flops_by_op"] = {k: v / setup.eval_batch for k, v in count.by_op.items()}
        out["uncounted_ops"] = count.uncounted
        del module
        _free(setup.device)
    if setup.timing:
        try:
            out.update(_time_eval(model_name, setup, dataset))
        except _oom_types() as exc:
            out["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        _free(setup.device)
    return out


def _time_eval(model_name: str, setup: Setup, dataset: Callable[[Any], Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    module = build_module(model_name, ZERO_MODE, setup.task)
    data, collate = dataset(module)
    loader = torch.utils.data.DataLoader(data, batch_size=setup.eval_batch, shuffle=False, collate_fn=collate)
    timer = BatchTimer(setup.device)
    if setup.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as root:
        trainer = _trainer(setup, [timer], Path(root))
        trainer.validate(module, dataloaders=loader, verbose=False)
    timed = timer.val[setup.warmup :]
    out["batch_times_s"] = timed
    out["warmup_s"] = timer.val[: setup.warmup]
    out["t_img"] = statistics.median(timed) / setup.eval_batch
    out["precision"] = str(trainer.precision)
    if setup.device.startswith("cuda"):
        out["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _to(batch: dict[str, Any], device: str) -> dict[str, Any]:
    from lightning.fabric.utilities.apply_func import move_data_to_device

    return move_data_to_device(batch, torch.device(device))


def _sum_by_op(counts: Sequence[FlopCount], weights: Sequence[float]) -> dict[str, float]:
    ops = sorted({op for c in counts for op in c.by_op})
    return {op: weighted([c.by_op.get(op, 0.0) for c in counts], weights) for op in ops}


def measure_model(model_name: str, modes: Sequence[str], setup: Setup) -> dict[str, Any]:
    """Every measurement of one model; a mode that runs out of memory is recorded, not fatal."""
    result: dict[str, Any] = {"model": model_name, "train": {}, "eval": None}
    for mode in modes:
        print(f"[cost] {model_name}: training step, mode {mode}", file=sys.stderr, flush=True)
        result["train"][mode] = measure_train(model_name, mode, setup)
    print(f"[cost] {model_name}: evaluation", file=sys.stderr, flush=True)
    result["eval"] = measure_eval(model_name, setup)
    return result


# ================================================================================================
# Putting it together


@dataclass
class Estimate:
    """Device time of one sweep of one model under one choice of E."""

    model: str
    label: str
    evaluations: dict[str, float]
    jobs: int
    steps: dict[str, float]
    eval_images: float
    hours: float | None
    longest_run_hours: float | None
    t_job_included: bool
    flop_total: float | None
    flop_hours_at_peak: float | None
    wall_hours: dict[int, float] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)


def estimates_for(
    model: str,
    measured: Mapping[str, Any] | None,
    sizes: Sequence[TaskSize],
    recipes: Mapping[Shots, ShotsRecipe],
    runs: Mapping[tuple[str, Shots], int],
    batch: int,
    sweep: SweepStats | None,
    t_job: float | None,
    peak_tflops: float | None,
    devices: Sequence[int],
) -> list[Estimate]:
    """One estimate per E choice: the sweep's E (when given), else the protocol's minimum and maximum."""
    choices: list[tuple[str, Callable[[str, Shots], float]]] = []
    if sweep is not None and sweep.evaluations:

        def from_sweep(mode: str, shots: Shots) -> float:
            value = sweep.mean_evaluations(mode, shots)
            return value if value is not None else float(recipes[shots].min_evaluations)

        choices.append(("E from the sweep", from_sweep))
    else:
        choices.append(("E at the protocol minimum", lambda m, s: float(recipes[s].min_evaluations)))
        choices.append(("E at the protocol maximum", lambda m, s: float(recipes[s].max_evaluations)))

    t_step, f_step, missing = {}, {}, []
    train = (measured or {}).get("train", {})
    for mode, _ in runs:
        if mode == ZERO_MODE:
            continue
        entry = train.get(mode) or {}
        if "t_step" in entry:
            t_step[mode] = entry["t_step"]
        if "flops_per_step" in entry:
            f_step[mode] = entry["flops_per_step"]
        if "t_step" not in entry and f"t_step({mode})" not in missing:
            missing.append(f"t_step({mode})")
    ev = (measured or {}).get("eval") or {}
    t_img, f_img = ev.get("t_img"), ev.get("flops_per_image")
    if t_img is None:
        missing.append("t_img")
    trained = {m for m, _ in runs if m != ZERO_MODE}
    out = []
    for label, evaluations in choices:
        work = sweep_work(sizes, recipes, runs, evaluations, batch)
        tot = totals(work)
        hours = longest = None
        if t_img is not None and trained <= set(t_step):
            seconds, longest_s = sweep_cost(work, t_step, t_img, t_job or 0.0)
            hours, longest = seconds / 3600, longest_s / 3600
        flop_total = flop_hours = None
        if f_img is not None and trained <= set(f_step):
            flop_total, _ = sweep_cost(work, f_step, f_img)
            if peak_tflops:
                flop_hours = flop_total / (peak_tflops * 1e12) / 3600
        used = {f"{m} {s}": evaluations(m, s) for m, s in runs if m != ZERO_MODE}
        est = Estimate(
            model=model,
            label=label,
            evaluations=used,
            jobs=tot.jobs,
            steps=tot.steps,
            eval_images=tot.eval_images,
            hours=hours,
            longest_run_hours=longest,
            t_job_included=t_job is not None,
            flop_total=flop_total,
            flop_hours_at_peak=flop_hours,
            missing=list(missing),
        )
        if hours is not None and longest is not None:
            est.wall_hours = {d: wall_clock(hours, longest, d) for d in devices}
        out.append(est)
    return out


# ------------------------------------------------------------------------------------------------
# Markdown


def _num(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def _flops(value: float | None) -> str:
    if value is None:
        return "–"
    for unit, size in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if abs(value) >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value:.3g} FLOP"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _shots_label(shots: Shots) -> str:
    return "zero-shot" if shots == 0 else ("all" if shots == ALL_SHOTS else f"{shots}-shot")


def render_markdown(report: Mapping[str, Any]) -> str:
    """The report as Markdown: machine, measured quantities, FLOPs, protocol counts, hours."""
    s = report["settings"]
    m = report["machine"]
    models = list(report["models"])
    where = m["device"] if s["device"] != "cpu" else f"CPU only ({m['cpu_threads']} threads)"
    lines = [
        "# ODinW-13 sweep cost",
        "",
        f"Machine: {where}; CPU {m['cpu']}; torch {m['torch']}"
        + (f", CUDA {m['cuda']}" if m.get("cuda") else "")
        + f", torchvision {m.get('torchvision', '?')}, lightning {m.get('lightning', '?')}.",
        f"Command: `{s.get('command') or 'python benchmarks/odinw/cost.py'}`.",
        "",
        f"Training: batch {s['batch']}, synthetic {s['image_hw'][0]} x {s['image_hw'][1]} images "
        f"resized to short side {', '.join(map(str, s['train_scales']))} (long side capped at "
        f"{s['max_size_train']}). Evaluation: batch {s['eval_batch']} at {s['test_hw'][0]} x "
        f"{s['test_hw'][1]}. Random, seeded weights.",
    ]
    if s["timing"]:
        lines[-1] += (
            f" Precision {s['precision']}; {s['warmup']} warm-up + the median of {s['reps']} timed "
            "batches per configuration."
        )
    if list(s["train_scales"]) != list(s["recipe_scales"]):
        lines.append(
            f"Only some of the recipe's scales ({', '.join(map(str, s['recipe_scales']))}) were used: "
            "t_step and FLOPs per step average the used ones (the largest alone overestimates)."
        )
    lines.append("")
    if s["timing"]:
        lines += ["## Measured quantities", ""]
        rows = []
        modes = sorted({mode for r in report["models"].values() for mode in r["train"]}, key=_mode_rank)
        for mode in modes:
            rows.append(
                [f"`t_step({mode})`", f"s per training step, batch {s['batch']}, {s['precision']}"]
                + [_cell(report["models"][n]["train"].get(mode), "t_step") for n in models]
            )
        rows.append(
            ["`t_img`", f"s per evaluated image, batch {s['eval_batch']}"]
            + [_cell(report["models"][n]["eval"], "t_img") for n in models]
        )
        if s["device"] != "cpu":
            for mode in modes:
                rows.append(
                    [f"peak memory ({mode})", "MiB, torch.cuda.max_memory_allocated"]
                    + [_cell(report["models"][n]["train"].get(mode), "peak_memory_mb", 0) for n in models]
                )
        lines += _table(["symbol", "meaning", *models], rows)
        lines += ["", "Per training scale (median s per step; weight = share of batches padded to it):", ""]
        header = ["model", "mode"] + [
            f"{sc} ({w:.3f})" for sc, w in zip(s["train_scales"], s["scale_weights"], strict=True)
        ]
        rows = []
        for n in models:
            for mode, r in report["models"][n]["train"].items():
                per = r.get("t_step_per_scale") or [None] * len(s["train_scales"])
                rows.append([n, mode, *(_num(v) for v in per)])
        lines += _table(header, rows)
        lines.append("")
    if s["flops"]:
        peak = s.get("peak_tflops")
        lines += [
            "## FLOPs (device-independent; lower bounds)",
            "",
            "Counted by `torch.utils.flop_counter.FlopCounterMode` (matmul, convolution and attention "
            "kernels, forward and backward, including the recomputation of gradient-checkpointed "
            "layers) plus torchvision `deform_conv2d` counted as its GEMM. Not counted: element-wise "
            "ops, normalisation, softmax, the loss's assignment, post-processing and NMS, the optimiser "
            "update"
            + (
                ", and these ops, for which there is no formula: "
                + ", ".join(f"`{o}`" for o in report["uncounted_ops"])
                if report["uncounted_ops"]
                else ""
            )
            + ". So every figure is a lower bound. Weighted over the training scales like t_step. "
            + (
                "Counted on meta tensors (shapes only; the loss and post-processing run for real on "
                "CPU stand-ins of the head outputs), which gives the same count as the real step."
                if s["flops_meta"]
                else f"Counted by running the real step on {s['device']}."
            ),
            "",
        ]
        rows = []
        modes = sorted({mode for r in report["models"].values() for mode in r["train"]}, key=_mode_rank)
        for mode in modes:
            rows.append(
                [f"per training step ({mode}), batch {s['batch']}"]
                + [
                    _flops((report["models"][n]["train"].get(mode) or {}).get("flops_per_step"))
                    for n in models
                ]
            )
        rows.append(
            [f"per evaluated image ({s['test_hw'][0]} x {s['test_hw'][1]})"]
            + [_flops((report["models"][n]["eval"] or {}).get("flops_per_image")) for n in models]
        )
        if peak:
            for mode in modes:
                rows.append(
                    [f"lower bound on t_step({mode}) at {peak:g} TFLOP/s, s"]
                    + [
                        _bound((report["models"][n]["train"].get(mode) or {}).get("flops_per_step"), peak)
                        for n in models
                    ]
                )
            rows.append(
                [f"lower bound on t_img at {peak:g} TFLOP/s, s"]
                + [_bound((report["models"][n]["eval"] or {}).get("flops_per_image"), peak) for n in models]
            )
        lines += _table(["quantity", *models], rows)
        if peak:
            lines += [
                "",
                f"The bounds divide the counted FLOPs by a peak of {peak:g} TFLOP/s given on the command "
                "line (a datasheet figure, not a measurement; no real step reaches it).",
            ]
        lines.append("")

    p = report["protocol"]
    lines += [
        f"## Protocol counts ({len(p['tasks'])} tasks; dataset sizes from `odinw13_sizes.csv`)",
        "",
        f"{p['jobs']} runs per model ({', '.join(p['modes'])}). Few-shot training and val images are "
        "K x classes, an upper bound on what the sampler keeps. EgoHands and Vehicles validate on "
        "mini_val in zero-shot and full-data runs, so those val counts are upper bounds too.",
        "",
    ]
    rows = []
    for shots_key, c in p["period_counts"].items():
        runs = p["runs_per_task"].get(shots_key, {})
        e = p["evaluation_bounds"].get(shots_key)
        rows.append(
            [
                _shots_label(normalize_shots(shots_key)),
                ", ".join(f"{mode} x{n}" for mode, n in runs.items()),
                f"{c['steps']:,}" if normalize_shots(shots_key) != 0 else "–",
                f"{c['val_images']:,}",
                f"{p['test_images']:,}",
                f"{e[0]}..{e[1]}" if normalize_shots(shots_key) != 0 else "1",
            ]
        )
    lines += _table(
        [
            "shots",
            "runs per task",
            "steps per period",
            "val images per evaluation",
            "test images per run",
            "E (protocol)",
        ],
        rows,
    )
    lines.append("")

    for sweep in report.get("sweeps") or []:
        lines += [f"## Sweep `{sweep['path']}` ({sweep['model'] or 'all models'})", ""]
        lines.append(
            "Runs: "
            + ", ".join(f"{k} {v}" for k, v in sorted(sweep["statuses"].items()))
            + f". Measured total wall time of the complete runs: {sweep['wall_time_s'] / 3600:.2f} h ("
            + ", ".join(f"{k} {v / 3600:.2f} h" for k, v in sweep["wall_by_mode"].items())
            + ")."
        )
        rows = [
            [
                _shots_label(normalize_shots(k)),
                str(len(v)),
                _num(statistics.fmean(v)) if v else "–",
                f"{min(v)}..{max(v)}" if v else "–",
            ]
            for k, v in sweep["evaluations_by_shots"].items()
        ]
        lines += ["", *_table(["shots", "complete runs", "mean E = len(val_history)", "range"], rows)]
        if sweep.get("t_job"):
            lines += [
                "",
                f"t_job (the zero-shot run on {sweep['t_job'][0]}, the smallest dataset): "
                f"{sweep['t_job'][1]:.1f} s.",
            ]
        lines.append("")

    lines += ["## Device-hours of one sweep", ""]
    where = m["device"] if s["device"] != "cpu" else "this CPU"
    rows = []
    devices = s["devices"]
    for est in report["estimates"]:
        hours = est["hours"]
        rows.append(
            [
                est["model"],
                est["label"],
                f"{est['jobs']}",
                _num(hours) + ("" if est["t_job_included"] or hours is None else f" + {est['jobs']} t_job"),
                *(
                    _num(est["wall_hours"].get(str(d), est["wall_hours"].get(d)))
                    if hours is not None
                    else "–"
                    for d in devices
                ),
                _num(est["flop_hours_at_peak"]) if est["flop_hours_at_peak"] is not None else "–",
            ]
        )
    peak = s.get("peak_tflops")
    lines += _table(
        [
            "model",
            "E",
            "runs",
            f"hours on {where}",
            *(f"wall-clock, {d} device{'s' if d > 1 else ''}" for d in devices),
            f"FLOP lower bound, hours at {peak:g} TFLOP/s" if peak else "FLOP lower bound",
        ],
        rows,
    )
    lines += [
        "",
        "hours = sum over runs of (steps x t_step(mode) + evaluated images x t_img + t_job). "
        "Wall-clock on n devices = max(hours / n, longest run) (perfect packing, so a lower bound). "
        "The FLOP bound is the sweep's counted FLOPs at the given peak, with no t_job.",
    ]
    noted = set()
    for est in report["estimates"]:
        if est["missing"] and est["model"] not in noted:
            noted.add(est["model"])
            lines.append(f"* {est['model']}: not measured: {', '.join(est['missing'])} (hours left out).")
    return "\n".join(lines) + "\n"


def _mode_rank(mode: str) -> int:
    return MEASURABLE_MODES.index(mode) if mode in MEASURABLE_MODES else len(MEASURABLE_MODES)


def _cell(entry: Mapping[str, Any] | None, key: str, digits: int = 3) -> str:
    if not entry:
        return "not measured"
    if "error" in entry:
        return "failed: " + entry["error"].split(":")[0]
    value = entry.get(key)
    if value is None:
        return "not measured"
    return f"{value:,.0f}" if digits == 0 else _num(value, digits)


def _bound(flops: float | None, peak_tflops: float) -> str:
    return "–" if flops is None else _num(flops / (peak_tflops * 1e12))


# ------------------------------------------------------------------------------------------------
# Command line


def build_setup(args: argparse.Namespace, input_cfg: Mapping[str, Any]) -> Setup:
    common = {
        "device": args.device,
        "batch": args.batch,
        "eval_batch": args.eval_batch,
        "warmup": args.warmup,
        "reps": args.reps,
        "flops_meta": not args.flops_on_device,
        "task": args.task,
        "timing": not args.skip_timing,
        "flops": not args.skip_flops,
    }
    if args.size is not None:  # tiny smoke run: one S x 5S/3 image size everywhere
        size = int(args.size)
        long = round(size * OFFICIAL_TEST_HW[1] / OFFICIAL_TEST_HW[0])
        return Setup(
            **common,
            train_scales=(size,),
            recipe_scales=(size,),
            max_size_train=long,
            image_hw=(size, long),
            test_size=size,
            max_size_test=long,
            test_hw=(size, long),
        )
    recipe = tuple(sorted(int(v) for v in input_cfg["min_size_train"]))
    return Setup(
        **common,
        train_scales=tuple(sorted(args.train_scales)) if args.train_scales else recipe,
        recipe_scales=recipe,
        max_size_train=int(input_cfg["max_size_train"]),
        image_hw=tuple(args.image_hw) if args.image_hw else OFFICIAL_TEST_HW,
        test_size=int(input_cfg["min_size_test"]),
        max_size_test=int(input_cfg["max_size_test"]),
        test_hw=OFFICIAL_TEST_HW,
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    trainer = trainer_defaults()
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", nargs="+", default=["glip_t"], help="conf/model names (glip_t glip_l glip_mini)"
    )
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"]
    )
    parser.add_argument("--modes", nargs="+", default=list(TRAIN_MODES), choices=MEASURABLE_MODES)
    parser.add_argument(
        "--batch", type=int, default=int(trainer["batch_size"]), help="training batch (trainer default)"
    )
    parser.add_argument(
        "--eval-batch", type=int, default=int(trainer["eval_batch_size"]), help="evaluation batch"
    )
    parser.add_argument("--reps", type=int, default=3, help="timed batches per configuration (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed batches before each configuration")
    parser.add_argument(
        "--train-scales",
        nargs="+",
        type=int,
        help="short sides to time (default: the model's multi-scale list)",
    )
    parser.add_argument(
        "--image-hw",
        nargs=2,
        type=int,
        metavar=("H", "W"),
        help="original training image size (default 800 1333)",
    )
    parser.add_argument("--size", type=int, help="tiny smoke run: every image S x 5S/3, one training scale S")
    parser.add_argument(
        "--task", default="odinw/pascalvoc", help="whose prompt the model reads (cost hardly depends on it)"
    )
    parser.add_argument(
        "--flops-on-device",
        action="store_true",
        help="count FLOPs by running the real step on --device (default: on meta tensors, no arithmetic)",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        help=f"peak TFLOP/s for FLOP-based lower bounds, e.g. {H100_SXM_DENSE_TFLOPS:g} "
        "(H100 SXM, dense FP16/BF16, datasheet)",
    )
    parser.add_argument("--skip-timing", action="store_true", help="count FLOPs only")
    parser.add_argument("--skip-flops", action="store_true", help="time only")
    parser.add_argument(
        "--sweep", help="a finished sweep folder: E = len(val_history) of its runs, and its wall time"
    )
    parser.add_argument(
        "--t-job",
        type=float,
        help="fixed seconds per run (start, model load); default: from --sweep, else left out",
    )
    parser.add_argument(
        "--devices", nargs="+", type=int, default=[1, 64], help="device counts for the wall-clock columns"
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--json", help="also write the whole report as JSON here (atomically)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure (unless skipped), combine with the protocol, return the report as plain data."""
    from adapt.model.config import model_config

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    _quiet_lightning()
    setup = build_setup(args, model_config(args.model[0])["arch"]["input"])
    sizes = load_sizes()
    recipes = load_shots_recipes()
    grid = load_sweep_grid()
    grid = replace(grid, modes=(ZERO_MODE, *[m for m in args.modes if m != ZERO_MODE]))
    runs = runs_per_task(grid)
    known = {s.task for s in sizes}
    if set(grid.tasks) - known:
        raise SystemExit(f"{SIZES_CSV.name} lacks {sorted(set(grid.tasks) - known)}")
    sizes = [s for s in sizes if s.task in grid.tasks]

    models: dict[str, Any] = {}
    for name in args.model:
        if setup.timing or setup.flops:
            models[name] = measure_model(name, args.modes, setup)
        else:
            models[name] = {"model": name, "train": {}, "eval": None}

    sweeps = {name: read_sweep(args.sweep, name) for name in args.model} if args.sweep else {}
    estimates = []
    for name in args.model:
        sweep = sweeps.get(name)
        t_job = args.t_job
        job_from_sweep = t_job_from_sweep(sweep, sizes) if sweep is not None else None
        if t_job is None and job_from_sweep is not None:
            t_job = job_from_sweep[1]
        estimates += estimates_for(
            name,
            models[name],
            sizes,
            recipes,
            runs,
            setup.batch,
            sweep,
            t_job,
            args.peak_tflops,
            args.devices,
        )

    counts = period_counts(sizes, recipes, setup.batch)
    uncounted = sorted(
        {op for r in models.values() for t in r["train"].values() for op in t.get("uncounted_ops", [])}
        | {op for r in models.values() for op in ((r.get("eval") or {}).get("uncounted_ops") or [])}
    )
    runs_by_shots: dict[str, dict[str, int]] = defaultdict(dict)
    for (mode, shots), n in runs.items():
        runs_by_shots[str(shots)][mode] = n
    return {
        "machine": machine_info("cuda" if setup.device.startswith("cuda") else "cpu"),
        "settings": {
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(setup).items()},
            "precision": trainer_precision(setup.device),
            "scale_weights": timed_scale_weights(setup.train_scales, setup.recipe_scales, setup.batch),
            "peak_tflops": args.peak_tflops,
            "devices": list(args.devices),
            "t_job": args.t_job,
            "command": " ".join(["python benchmarks/odinw/cost.py", *getattr(args, "argv", [])]),
        },
        "models": models,
        "uncounted_ops": uncounted,
        "protocol": {
            "tasks": list(grid.tasks),
            "modes": list(grid.modes),
            "jobs": sum(runs.values()) * len(sizes),
            "runs_per_task": dict(runs_by_shots),
            "period_counts": {
                str(k): {"steps": v.steps, "val_images": v.val_images} for k, v in counts.items()
            },
            "test_images": sum(s.test for s in sizes),
            "evaluation_bounds": {
                str(k): [r.min_evaluations, r.max_evaluations] for k, r in recipes.items() if k != 0
            },
        },
        "sweeps": [
            {
                "path": s.path,
                "model": s.model,
                "statuses": s.statuses,
                "wall_time_s": s.wall_time_s,
                "wall_by_mode": s.wall_by_mode,
                "evaluations": {f"{m} {k}": v for (m, k), v in s.evaluations.items()},
                "evaluations_by_shots": {str(k): v for k, v in s.evaluations_by_shots().items()},
                "t_job": t_job_from_sweep(s, sizes),
            }
            for s in sweeps.values()
        ],
        "estimates": [
            {**vars(e), "wall_hours": {str(k): v for k, v in e.wall_hours.items()}} for e in estimates
        ],
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    report = run(args)
    text = render_markdown(report)
    print(text, end="")
    if args.json:
        write_json(report, args.json)
        print(f"[cost] wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
