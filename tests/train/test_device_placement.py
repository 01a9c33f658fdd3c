"""Device mistakes caught without a GPU: nothing in the model, loss or post-processing creates a
tensor on the default (CPU) device.

On a GPU such a tensor either fails (``Expected all tensors to be on the same device``) or costs a
host-to-device copy per step. The ``meta`` device cannot run this model (ATSS assignment, NMS and
the skip rules have data-dependent shapes), so the check is the equivalent at the source: a
``TorchFunctionMode`` that records every tensor factory (``torch.zeros``, ``torch.tensor``,
``torch.arange``, ...) called without ``device=`` while one training step (forward, loss, backward)
and one evaluation (forward, post-processing) run, per mode. Data loading and collation stay outside
the check: building batches on the CPU is their job.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._device import _device_constructors
from train_helpers import compose_job

import adapt
from adapt.data import build_task
from adapt.modes import build_policy
from adapt.runs.job import build_model, task_prompt
from adapt.train.datamodule import TaskDataModule
from adapt.train.module import GLIPAdaptation

PACKAGE = Path(adapt.__file__).parent
TORCH = Path(torch.__file__).parent


class DefaultDeviceFactories(TorchFunctionMode):
    """Records (factory, caller) for each tensor factory that is given no ``device``."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._factories = _device_constructors()

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        tensor_input = func in (torch.as_tensor, torch.asarray) and args and isinstance(args[0], torch.Tensor)
        if func in self._factories and kwargs.get("device") is None and not tensor_input:
            self.found.append(f"torch.{func.__name__} at {_caller()}")
        return func(*args, **kwargs)


def _caller() -> str:
    """The first frame outside torch: the line that called the factory."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if not Path(frame.filename).is_relative_to(TORCH):
            return f"{frame.filename}:{frame.lineno} ({frame.line})"
    return "?"


@pytest.fixture(scope="module")
def demo() -> dict[str, Any]:
    cfg = compose_job()
    task = build_task(cfg.task)
    return {"task": task, "cfg": cfg}


def _module_and_batches(demo: dict[str, Any], mode: str) -> tuple[GLIPAdaptation, Any, Any]:
    cfg = compose_job(f"mode={mode}", "shots=1")
    model, _ = build_model(cfg)
    prompt = task_prompt(demo["task"], model)
    dm = TaskDataModule(
        demo["task"], prompt, model.cfg.input, shots=1, copies=1, seed=3, batch_size=1, eval_batch_size=1
    )
    module = GLIPAdaptation(model, build_policy(cfg.mode), prompt, seed=3)
    train = next(iter(dm.train_dataloader())) if mode != "zero" else None
    val = next(iter(dm.val_dataloader()))
    return module, train, val


@pytest.mark.parametrize("mode", ["zero", "prompt", "linear", "full", "lora"])
def test_no_tensor_is_created_on_the_default_device(demo: dict[str, Any], mode: str):
    module, train, val = _module_and_batches(demo, mode)
    check = DefaultDeviceFactories()
    if train is not None:
        module.train()
        with check:
            module.on_train_batch_start(train, 0)
            loss = module.training_step(train, 0)
            assert loss is not None and loss.requires_grad
            loss.backward()
        assert any(p.grad is not None for p in module.model.parameters())
    module.eval()
    module.on_validation_epoch_start()
    with check, torch.no_grad():
        module.validation_step(val, 0)
    assert len(module._predictions) == val["images"].shape[0]
    assert not check.found, "tensors created on the default device:\n" + "\n".join(check.found)


def test_the_check_sees_a_factory_without_device():
    """It fails on the mistake it is for, and accepts the device-aware forms."""
    x = torch.ones(3)
    with DefaultDeviceFactories() as check:
        torch.zeros(3, device=x.device)
        x.new_zeros(2)
        torch.zeros_like(x)
        torch.as_tensor(x)
        assert not check.found
        _ = x + torch.arange(3)
    assert len(check.found) == 1 and check.found[0].startswith("torch.arange at ")
    assert __file__ in check.found[0]
