"""Measuring one model: t_step per training mode, t_img, and FLOPs per step and per image.

Everything runs the job's own code on ``Setup.device``: the Lightning ``Trainer`` of
``adapt.runs.job.build_trainer`` on ``conf/trainer/default.yaml``, ``GLIPAdaptation`` with the
mode's policy and optimiser, adapt's transforms and collate, on synthetic images with random,
seeded weights (speed does not depend on them). FLOPs are counted by ``adapt.flops.count_flops``
on the same real step; counting GLIP-L at full size therefore needs the memory of one step on the
chosen device.
"""

from __future__ import annotations

import logging
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch

from adapt.flops import FlopCount, count_flops
from adapt.grid import ZERO_MODE
from benchmarks.odinw.protocol import timed_scale_weights, weighted

OFFICIAL_TEST_HW = (800, 1333)
# Synthetic targets: boxes per training image (the loss cost hardly depends on it).
BOXES_PER_IMAGE = 3


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
    task: str = "odinw/pascalvoc"
    timing: bool = True
    flops: bool = True


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


def quiet_lightning() -> None:
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
    warnings.filterwarnings("ignore", message=r".*validation_step.*val_dataloader.*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")


def _trainer(setup: Setup, callbacks: list[L.Callback], root: Path) -> L.Trainer:
    """The job's Trainer (``adapt.runs.job.build_trainer`` on ``conf/trainer/default.yaml``)."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    from omegaconf import OmegaConf

    from adapt.config import compose_config
    from adapt.runs.job import build_trainer

    t = compose_config(["trainer=default", "callbacks=none"]).trainer
    t.accelerator = "gpu" if setup.device.startswith("cuda") else "cpu"
    t.enable_progress_bar = False
    t.max_epochs = 1
    trainer = build_trainer(OmegaConf.create({"trainer": t, "callbacks": {}}), root, callbacks, None)
    # Lightning adds a checkpoint callback by default; saving a full model is not part of a step.
    trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, ModelCheckpoint)]
    return trainer


def trainer_precision(device: str) -> str:
    from adapt.runs.precision import resolve_precision

    return resolve_precision({"accelerator": "gpu" if device.startswith("cuda") else "cpu"})


def data_defaults() -> dict[str, Any]:
    """conf/data/default.yaml's batch sizes and workers, as the job composes them."""
    from omegaconf import OmegaConf

    from adapt.config import compose_config

    data = compose_config(["shots=5"]).data
    return {k: OmegaConf.select(data, k) for k in ("batch_size", "eval_batch_size", "num_workers")}


def _mode_cfg(mode: str) -> Any:
    """``conf/mode/<mode>.yaml`` composed as the job composes it (``defaults:`` lists included)."""
    from adapt.config import compose_config

    return compose_config([f"mode={mode}", "shots=5"]).mode


def build_module(
    model_name: str, mode: str, task: str, device: str = "cpu", use_checkpoint: bool = True
) -> Any:
    """GLIPAdaptation over a seeded random ``model_name`` with ``mode``'s policy, for ``task``'s prompt.

    ``use_checkpoint`` pins the fusion's checkpointing (default: on, the official setting, so that
    counts and times do not depend on the free memory ``auto`` would look at).
    """
    from hydra.utils import instantiate

    from adapt.data import build_task
    from adapt.model import GLIPConfig, build_glip
    from adapt.model.config import model_config
    from adapt.model.fusion import VLFuse
    from adapt.modes import build_policy
    from adapt.runs.job import task_prompt
    from adapt.train.module import GLIPAdaptation

    cfg = GLIPConfig.from_dict(model_config(model_name)["arch"])
    model = build_glip(cfg)
    from adapt.config import compose_config

    mode_cfg = _mode_cfg(mode)
    policy = build_policy(mode_cfg)
    prompt = task_prompt(build_task(compose_config([f"task={task}"]).task), model, policy)
    for fuse in model.modules():
        if isinstance(fuse, VLFuse):
            fuse.checkpoint_policy = fuse.use_checkpoint = use_checkpoint
    optimizer = instantiate(mode_cfg["optimizer"]) if mode_cfg.get("optimizer") else None
    module = GLIPAdaptation(model, policy, prompt, optimizer=optimizer, evaluator=_no_metrics)
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


def train_step_flops(module: Any, batch: dict[str, Any]) -> FlopCount:
    """FLOPs of one training step of ``module`` on ``batch``: its own ``training_step`` and the
    backward pass, on the module's device (the fixed prompt is encoded before, as the job does)."""
    module.train()
    if module.text_cached():
        module.text_features(1)  # the job encodes the fixed prompt once, before its first step

    def step() -> None:
        module.training_step(batch, 0).backward()

    try:
        return count_flops(step)
    finally:
        module.zero_grad(set_to_none=True)


def eval_flops(module: Any, batch: dict[str, Any]) -> FlopCount:
    """FLOPs of the job's ``validation_step`` on ``batch`` (forward and post-processing, no grad).

    One uncounted step first: the job encodes its prompts once per run (the task caption, an
    ensemble's every caption), so the count is what each further batch costs.
    """
    module.eval()
    with torch.no_grad():
        module.validation_step(batch, 0)
    module._predictions = []

    def forward() -> None:
        with torch.no_grad():
            module.validation_step(batch, 0)

    try:
        return count_flops(forward)
    finally:
        module._predictions = []


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
        module = build_module(model_name, mode, setup.task, setup.device)
        data, collate = dataset(module)
        counts, padded = [], []
        for k in range(len(scales)):
            start = k * per_scale * setup.batch
            batch = collate([data[start + j] for j in range(setup.batch)])
            padded.append(list(batch["images"].shape[-2:]))
            counts.append(train_step_flops(module, _to(batch, setup.device)))
        out["padded_hw"] = padded
        out["trainable_params"] = sum(p.numel() for p in module.model.parameters() if p.requires_grad)
        out["flops_per_scale"] = [c.total for c in counts]
        out["flops_by_op"] = _sum_by_op(counts, weights)
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


def measure_eval(model_name: str, setup: Setup, mode: str = ZERO_MODE) -> dict[str, Any]:
    """t_img and FLOPs per evaluated image under ``mode``'s policy (zero-shot by default: the prompt
    is encoded once per job; an evaluation-only method such as ``zero_ensemble`` detects its way)."""
    from adapt.train.datamodule import GLIPCollate

    transform = _transform(setup, None)
    n = (setup.warmup + setup.reps) * setup.eval_batch
    out: dict[str, Any] = {}

    def dataset(module: Any) -> tuple[SyntheticImages, GLIPCollate]:
        classes = len(module.prompt.class_names)
        data = SyntheticImages(n, setup.test_hw, classes, lambda i: transform, seed=1)
        return data, GLIPCollate(module.prompt, module.model.cfg.input)

    if setup.flops:
        module = build_module(model_name, mode, setup.task, setup.device)
        data, collate = dataset(module)
        batch = collate([data[i] for i in range(setup.eval_batch)])
        out["padded_hw"] = list(batch["images"].shape[-2:])
        count = eval_flops(module, _to(batch, setup.device))
        out["flops_per_image"] = count.total / setup.eval_batch
        out["flops_by_op"] = {k: v / setup.eval_batch for k, v in count.by_op.items()}
        del module
        _free(setup.device)
    if setup.timing:
        try:
            out.update(_time_eval(model_name, setup, dataset, mode))
        except _oom_types() as exc:
            out["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        _free(setup.device)
    return out


def _time_eval(
    model_name: str, setup: Setup, dataset: Callable[[Any], Any], mode: str = ZERO_MODE
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    module = build_module(model_name, mode, setup.task)
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


def measure_model(
    model_name: str, modes: Sequence[str], setup: Setup, eval_modes: Sequence[str] = ()
) -> dict[str, Any]:
    """Every measurement of one model; a mode that runs out of memory is recorded, not fatal.

    ``eval_modes``: evaluation-only modes besides zero-shot (``zero_ensemble``), measured per image.
    """
    result: dict[str, Any] = {"model": model_name, "train": {}, "eval": None, "eval_modes": {}}
    for mode in modes:
        print(f"[cost] {model_name}: training step, mode {mode}", file=sys.stderr, flush=True)
        result["train"][mode] = measure_train(model_name, mode, setup)
    print(f"[cost] {model_name}: evaluation", file=sys.stderr, flush=True)
    result["eval"] = measure_eval(model_name, setup)
    for mode in eval_modes:
        print(f"[cost] {model_name}: evaluation, mode {mode}", file=sys.stderr, flush=True)
        result["eval_modes"][mode] = measure_eval(model_name, setup, mode)
    return result
