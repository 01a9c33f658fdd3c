"""Frozen features computed once: training with the cache equals training without it, bit for bit."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from PIL import Image
from train_helpers import mini_model

from adapt.data.transforms import RandomHorizontalFlip, build_transforms
from adapt.model.config import InputConfig
from adapt.modes import build_policy
from adapt.prompt import encode_prompt, load_tokenizer
from adapt.train.datamodule import GLIPCollate
from adapt.train.feature_cache import FeatureCache, view_keys
from adapt.train.module import GLIPAdaptation
from adapt.train.optim import adamw

CLASSES = ["tree", "car"]
OPTIMIZER = partial(
    adamw, lr=0.01, weight_decay=0.05, bias_lr_factor=2.0, bias_weight_decay=0.0, lang_lr=None
)


def _views(seed: int = 0) -> list[tuple[torch.Tensor, dict]]:
    """Two images, each at two scales and both flips: the views of a tiny multi-scale training set."""
    g = torch.Generator().manual_seed(seed)
    samples = []
    for image_id, (h, w) in ((7, (90, 120)), (9, (100, 100))):
        pixels = torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=g).numpy()
        target = {
            "boxes": torch.tensor([[5.0, 6.0, 40.0, 50.0], [20.0, 10.0, 80.0, 70.0]]),
            "labels": torch.tensor([1, 2]),
            "image_id": image_id,
            "orig_size": (h, w),
            "size": (h, w),
        }
        for scale in (64, 96):
            for flip in (0.0, 1.0):
                transform = build_transforms(True, min_size_train=scale, max_size_train=128, flip_prob=flip)
                samples.append(transform(Image.fromarray(pixels), dict(target)))
    return samples


def _batches(module: GLIPAdaptation) -> list[dict]:
    views = _views()
    collate = GLIPCollate(module.prompt, InputConfig())
    # Two batches of two, across images, scales and flips (padded to their larger member).
    return [collate([views[i], views[j]]) for i, j in ((0, 6), (3, 5))]


def _module(mode: str, cache_mb: float, cache_tower: bool = False, **mode_cfg: object) -> GLIPAdaptation:
    model = mini_model()
    prompt = encode_prompt(CLASSES, load_tokenizer())
    # linear_cached is LinearProbe(cache_tower=True), selected by its YAML's policy node.
    mode_cfg = {"name": mode, **mode_cfg}
    if cache_tower:
        mode_cfg["policy"] = {"_target_": "adapt.modes.LinearProbe", "cache_tower": True}
    policy = build_policy(mode_cfg)
    module = GLIPAdaptation(model, policy, prompt, optimizer=OPTIMIZER, feature_cache_mb=cache_mb)
    module.train()
    return module


def _train(module: GLIPAdaptation, epochs: int = 2) -> list[tuple[float, list[torch.Tensor]]]:
    """Steps over the batches for ``epochs`` passes (AdamW updates included); loss and grads per step."""
    optimizer = module.configure_optimizers()
    backbone_calls = []
    handle = module.model.backbone.register_forward_hook(lambda *args: backbone_calls.append(1))
    record = []
    batches = _batches(module)
    for epoch in range(epochs):
        for step, batch in enumerate(batches if epoch % 2 == 0 else batches[::-1]):
            torch.manual_seed(step)  # dropout (linear probe) draws the same masks in both runs
            loss = module.training_step(batch, step)
            loss.backward()
            grads = [p.grad.clone() for p in module.model.parameters() if p.requires_grad]
            record.append((loss.item(), grads))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    handle.remove()
    module.backbone_calls = len(backbone_calls)  # type: ignore[attr-defined]
    return record


def _assert_same(a: list, b: list) -> None:
    assert len(a) == len(b)
    for (loss_a, grads_a), (loss_b, grads_b) in zip(a, b, strict=True):
        assert loss_a == loss_b
        for ga, gb in zip(grads_a, grads_b, strict=True):
            torch.testing.assert_close(ga, gb, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["prompt", "linear"])
def test_training_with_the_cache_equals_training_without_it(mode):
    plain = _module(mode, 0)
    cached = _module(mode, 64)
    _assert_same(_train(plain), _train(cached))
    batches = len(_batches(plain))
    assert plain.backbone_calls == 2 * batches
    # Second pass (another order): every view has been seen, so the backbone does not run.
    stats = cached.feature_cache.stats()
    assert stats == {"views": 2 * batches, "mb": stats["mb"], "hits": batches, "misses": batches}
    assert cached.backbone_calls == batches


def test_full_fine_tuning_never_uses_the_cache():
    module = _module("full", 64)
    batch = _batches(module)[0]
    module.training_step(batch, 0)
    assert not module.backbone_cacheable() and len(module.feature_cache) == 0


def test_lora_on_a_frozen_backbone_uses_the_cache():
    config = {
        "_target_": "peft.LoraConfig",
        "r": 2,
        "lora_alpha": 4,
        "target_modules": r".*dyhead_tower\.\d+\.b_attn\.attn\.v_proj",
    }
    module = _module("lora", 64, policy={"_target_": "adapt.modes.LoRA", "config": config})
    module.training_step(_batches(module)[0], 0)
    assert module.backbone_cacheable() and len(module.feature_cache) == 2


def test_linear_cached_equals_the_uncached_eval_mode_tower_and_skips_the_tower():
    plain = _module("linear", 0, cache_tower=True)
    cached = _module("linear", 64, cache_tower=True)
    assert not cached.model.head.dyhead_tower.training and cached.model.head.training
    tower_calls = []
    cached.model.head.dyhead_tower[0].register_forward_hook(lambda *args: tower_calls.append(1))
    _assert_same(_train(plain), _train(cached))
    stats = cached.feature_cache.stats()
    assert len(tower_calls) == stats["misses"] == stats["hits"] == len(_batches(plain))


def test_prompt_tuning_does_not_cache_the_tower():
    module = _module("prompt", 64)  # only a linear probe's policy can cache the tower
    batch = _batches(module)[0]
    assert not module.tower_cacheable(batch)


def test_view_keys_tell_image_scale_flip_and_padding_apart():
    module = _module("prompt", 0)
    views = _views()
    collate = GLIPCollate(module.prompt, InputConfig())
    keys = {k for i in range(8) for k in view_keys(collate([views[i]]))}
    assert len(keys) == 8
    alone = view_keys(collate([views[0]]))[0]
    padded = view_keys(collate([views[0], views[6]]))[0]  # companion: a larger image
    assert alone[:3] == padded[:3] and alone != padded
    assert view_keys({"images": torch.zeros(1, 3, 32, 32), "targets": [{"boxes": torch.zeros(0, 4)}]}) is None


def test_the_flip_transform_marks_the_view():
    image = Image.new("RGB", (10, 8))
    _, flipped = RandomHorizontalFlip(1.0)(image, {"boxes": torch.tensor([[1.0, 1.0, 3.0, 3.0]])})
    _, kept = RandomHorizontalFlip(0.0)(image, {"boxes": torch.tensor([[1.0, 1.0, 3.0, 3.0]])})
    assert flipped["hflip"] is True and "hflip" not in kept


def test_the_cache_stays_within_its_budget_least_recently_used_first():
    entry = torch.zeros(1, 256)  # 1 KiB per view
    cache = FeatureCache(max_bytes=3 * 1024)
    for i in range(3):
        cache.put([(i,)], [entry])
    assert cache.get([(0,)]) is not None  # 0 is now the most recently used
    cache.put([(3,)], [entry])
    assert len(cache) == 3 and cache.bytes == 3 * 1024
    assert cache.get([(1,)]) is None and cache.get([(0,)]) is not None
    cache.put([(4,)], [torch.zeros(1, 4096)])  # larger than the whole budget: not kept
    assert cache.get([(4,)]) is None and len(cache) == 3
    with pytest.raises(ValueError, match="feature_cache_mb"):
        FeatureCache(-1)
