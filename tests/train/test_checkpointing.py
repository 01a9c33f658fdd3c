"""``use_checkpoint: true | false | auto``: the same numbers either way, and auto decides by memory."""

from __future__ import annotations

import pytest
import torch
from train_helpers import FIXTURE, mini_arch, mini_model, oracle_train_batch

from adapt.model import GLIPConfig
from adapt.model.fusion import VLFuse
from adapt.model.preprocess import batch_images
from adapt.modes import build_policy
from adapt.prompt import encode_prompt, load_tokenizer
from adapt.train import checkpointing
from adapt.train.module import GLIPAdaptation


def _oracle_module(mode: str, policy: bool | str) -> tuple[GLIPAdaptation, dict]:
    io = torch.load(FIXTURE / "mini_io.pt", weights_only=True)
    model = mini_model(weights=True)
    for fuse in model.modules():
        if isinstance(fuse, VLFuse):
            fuse.checkpoint_policy = policy
            fuse.use_checkpoint = policy is not False
    module = GLIPAdaptation(
        model, build_policy({"name": mode}), encode_prompt(io["inputs"]["categories"], load_tokenizer())
    )
    if mode == "prompt":
        with torch.no_grad():
            model.prompt_offset.copy_(io["prompt_tuning"]["tunable_linear_weight_rows_0_255"])
    module.train()
    batch = oracle_train_batch(io)
    return module, batch


def _step(module: GLIPAdaptation, batch: dict) -> tuple[float, list[torch.Tensor]]:
    torch.manual_seed(0)
    loss = module.training_step(batch, 0)
    assert loss is not None
    loss.backward()
    grads = [p.grad.clone() for p in module.model.parameters() if p.requires_grad]
    return loss.item(), grads


def test_prompt_tuning_with_checkpointing_on_and_off_gives_identical_loss_and_gradient():
    # (Full fine-tuning: tests/model/test_forward_oracle.py::test_fusion_checkpoint_same_gradients.)
    on_loss, on_grads = _step(*_oracle_module("prompt", True))
    off_loss, off_grads = _step(*_oracle_module("prompt", False))
    assert on_loss == off_loss
    assert len(on_grads) == len(off_grads) > 0
    for a, b in zip(on_grads, off_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _tiny_module(mode: str, policy: bool | str) -> tuple[GLIPAdaptation, dict]:
    """The mini model on two small random images (fast)."""
    model = mini_model()
    for fuse in model.modules():
        if isinstance(fuse, VLFuse):
            fuse.checkpoint_policy = policy
            fuse.use_checkpoint = policy is not False
    prompt = encode_prompt(["tree", "car"], load_tokenizer())
    module = GLIPAdaptation(model, build_policy({"name": mode}), prompt)
    module.train()
    g = torch.Generator().manual_seed(0)
    images, sizes = batch_images([torch.rand(3, 64, 96, generator=g), torch.rand(3, 96, 64, generator=g)])
    boxes = torch.tensor([[4.0, 4.0, 40.0, 30.0], [10.0, 20.0, 50.0, 60.0]])
    targets = [{"boxes": boxes, "positive_map": prompt.positive_map(torch.tensor([1, 2]))} for _ in sizes]
    return module, {"images": images, "image_sizes": sizes, "targets": targets}


def test_auto_turns_checkpointing_off_where_the_fusion_fits_and_on_where_it_does_not(monkeypatch):
    module, batch = _tiny_module("prompt", "auto")
    fuses = [m for m in module.model.modules() if isinstance(m, VLFuse)]
    assert all(f.use_checkpoint for f in fuses)  # "auto" starts on: safe outside a training step
    need = checkpointing.fusion_activation_bytes(module.model, *_bhw(batch["images"]))
    monkeypatch.setattr(
        checkpointing, "available_memory", lambda device: int(need / checkpointing.FREE_MEMORY_SHARE) + 1
    )
    module.training_step(batch, 0)
    assert not any(f.use_checkpoint for f in fuses)
    monkeypatch.setattr(
        checkpointing, "available_memory", lambda device: int(need / checkpointing.FREE_MEMORY_SHARE) - 1
    )
    module.training_step(batch, 0)
    assert all(f.use_checkpoint for f in fuses)


def test_explicit_settings_are_not_overridden_by_auto():
    module, batch = _tiny_module("prompt", True)
    module.training_step(batch, 0)
    assert all(m.use_checkpoint for m in module.model.modules() if isinstance(m, VLFuse))
    linear, batch = _tiny_module("linear", "auto")  # the official probe never recomputes
    linear.training_step(batch, 0)
    assert not any(m.use_checkpoint for m in linear.model.modules() if isinstance(m, VLFuse))


def _bhw(images: torch.Tensor) -> tuple[int, int, int]:
    return images.shape[0], images.shape[-2], images.shape[-1]


def _saved_bytes(mode: str, policy: bool) -> int:
    """Bytes autograd keeps for backward in one training step (distinct storages)."""
    module, batch = _tiny_module(mode, policy)
    storages: dict[int, int] = {}
    keep: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[id(t.untyped_storage())] = t.untyped_storage().nbytes()
        keep.append(t)  # alive until the end, so that ids are not reused
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module.training_step(batch, 0)
    return sum(storages.values())


@pytest.mark.parametrize("mode", ["prompt", "full"])
def test_the_fusion_memory_estimate_over_counts_what_autograd_saves(mode):
    module, batch = _tiny_module(mode, False)
    estimate = checkpointing.fusion_activation_bytes(module.model, *_bhw(batch["images"]))
    fusion = _saved_bytes(mode, False) - _saved_bytes(mode, True)
    assert fusion > 0
    assert fusion <= estimate <= 2.5 * fusion


def test_feature_locations_follow_the_fpn_levels():
    # 800 x 1344 (the official test size padded): P3 100x168 ... P7 7x11.
    assert checkpointing.feature_locations(800, 1344, (8, 16, 32, 64, 128)) == (
        100 * 168 + 50 * 84 + 25 * 42 + 13 * 21 + 7 * 11
    )


def test_a_bad_use_checkpoint_value_is_refused_by_name():
    arch = mini_arch()
    arch["head"]["use_checkpoint"] = "sometimes"
    with pytest.raises(ValueError, match="use_checkpoint"):
        GLIPConfig.from_dict(arch)
