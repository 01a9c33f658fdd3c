"""The family's training step: transformers' loss over a batch whose images do not affect each other,
data-parallel training exact against one process, the mode seam, and the box convention."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from adapt.boxes import GLIP_BOXES, TRANSFORMERS_BOXES, exclusive_corners
from adapt.data.transforms import RandomHorizontalFlip
from adapt.families import build_family, family_model_config
from adapt.metrics.coco import detections_to_coco
from adapt.modes import ModePolicy, PromptTuning, build_policy, register_mode
from adapt.modes.family import FamilyPolicy, family_mode
from adapt.train.family_data import FamilyCollate
from adapt.train.family_module import FamilyAdaptation
from tests.families.conftest import CLASSES, image
from tests.train.train_helpers import TrainingStep

# Two images of different sizes (two groups for Grounding DINO's processor), with 2 and 1 boxes in
# the data reader's inclusive corners.
SAMPLES = [
    (
        image(0, (48, 80)),
        {
            "boxes": torch.tensor([[4.0, 6.0, 29.0, 39.0], [40.0, 10.0, 69.0, 29.0]]),
            "labels": torch.tensor([1, 3]),
        },
    ),
    (image(1, (96, 60)), {"boxes": torch.tensor([[10.0, 20.0, 49.0, 89.0]]), "labels": torch.tensor([2])}),
]
WORLD = 2


def module_for(name: str, mode: str = "prompt") -> FamilyAdaptation:
    torch.set_num_threads(1)
    fam = build_family(name)
    prompt = fam.encode_prompt(CLASSES)
    return FamilyAdaptation(fam, FamilyPolicy(build_policy({"name": mode}), prompt), prompt)


def collate(module: FamilyAdaptation, samples: list) -> dict[str, Any]:
    return FamilyCollate(module.family.processor.image_processor)(samples)


def test_the_step_is_transformers_loss_over_the_batch_whatever_the_image_sizes():
    module = module_for("grounding_dino_mini", "linear")
    module.train()
    # Same size: one group, transformers' own loss on the batch, bit for bit.
    same = [SAMPLES[0], (image(2, (48, 80)), SAMPLES[1][1])]
    batch = collate(module, same)
    assert len(batch["batches"]) == 1
    together = module.family.preprocess([im for im, _ in same], together=True)[0]
    want = module.family(together, module.prompt, targets=batch["targets"])["total"]
    assert torch.equal(module.training_step(batch, 0), want)
    # Two sizes: two groups, each image's raw loss terms summed and divided by the batch's 3 boxes.
    batch = collate(module, SAMPLES)
    assert len(batch["batches"]) == 2
    raw = sum(
        module.family(g, module.prompt, targets=[batch["targets"][i] for i in g.index])["total"]
        * len(batch["targets"][g.index[0]]["boxes"])
        for g in batch["batches"]
    )
    torch.testing.assert_close(module.training_step(batch, 0), raw / 3, rtol=1e-6, atol=0)


def test_targets_are_transformers_boxes_and_flips_agree():
    boxes = torch.tensor([[10.0, 20.0, 29.0, 59.0]])  # inclusive: 20 x 40 pixels
    exclusive = exclusive_corners(boxes)
    assert exclusive.tolist() == [[10.0, 20.0, 30.0, 60.0]]
    img = image(3, (80, 100))
    _, flipped = RandomHorizontalFlip(1.0)(img, {"boxes": boxes})
    # GLIP's flip of inclusive corners is transformers' flip (x1' = W - x2) of exclusive ones.
    assert exclusive_corners(flipped["boxes"]).tolist() == [[100 - 30.0, 20.0, 100 - 10.0, 60.0]]
    # The COCO writer: a family's boxes are written as they are (no rescale, no +1), GLIP's as before.
    target = {"image_id": 1, "size": (40, 50), "orig_size": (80, 100)}
    dets = [{"boxes": exclusive, "scores": torch.tensor([0.5]), "labels": torch.tensor([1])}]
    assert detections_to_coco(dets, [target], [7], boxes=TRANSFORMERS_BOXES)[0]["bbox"] == [10, 20, 20, 40]
    assert (
        detections_to_coco(dets, [target], [7])[0]["bbox"]
        == detections_to_coco(dets, [target], [7], boxes=GLIP_BOXES)[0]["bbox"]
        == [20, 40, 41, 81]
    )


def test_the_seam_maps_registered_policies_to_family_modes():
    assert [family_mode(build_policy({"name": m})) for m in ("zero", "prompt", "linear", "full", "lora")] == [
        "zero",
        "prompt",
        "linear",
        "full",
        "lora",
    ]
    assert (
        family_mode(
            build_policy(
                {
                    "name": "linear_cached",
                    "policy": {"_target_": "adapt.modes.LinearProbe", "cache_tower": True},
                }
            )
        )
        == "linear"
    )

    @register_mode("test_family_prompt_variant")
    class Variant(PromptTuning):
        pass

    @register_mode("test_family_unknown")
    class Unknown(ModePolicy):
        def trains_parameter(self, name: str, model: Any) -> bool:
            return False

    assert family_mode(Variant()) == "prompt"
    with pytest.raises(ValueError, match=r"'test_family_unknown' .* cannot run on a detector family"):
        family_mode(Unknown())


def test_lora_takes_the_mode_s_rank_and_the_model_config_s_targets():
    from peft import LoraConfig

    from adapt.modes import LoRA

    fam = build_family("owlv2_mini")
    prompt = fam.encode_prompt(CLASSES)
    targets = r"owlv2\.vision_model\.encoder\.layers\.\d+\.self_attn\.q_proj"
    policy = FamilyPolicy(
        LoRA(LoraConfig(r=2, lora_alpha=4, target_modules=r"dyhead_tower")), prompt, targets
    )
    trainable = policy.apply(fam)
    assert trainable and all(".q_proj.lora_" in n for n in trainable)
    assert {tuple(p.shape) for n, p in fam.named_parameters() if n.endswith("lora_A.default.weight")} == {
        (2, 32)
    }
    # Without model.lora_targets: the family's own (the mode's target_modules name GLIP's modules).
    fam = build_family("owlv2_mini")
    FamilyPolicy(LoRA(LoraConfig(r=2, target_modules=r"dyhead_tower")), prompt).apply(fam)
    assert {
        n.split(".self_attn.")[1].split(".")[0] for n, p in fam.named_parameters() if p.requires_grad
    } == {
        "q_proj",
        "k_proj",
        "v_proj",
        "out_proj",
    }
    assert family_model_config("owlv2_mini").lora_targets is None


def test_the_recipe_s_lang_lr_applies_to_the_family_s_text_encoder():
    from adapt.train.optim import param_groups

    module = module_for("grounding_dino_mini", "full")
    groups = param_groups(module.model, {"lr": 1e-4, "weight_decay": 0.05, "lang_lr": 1e-5})
    lrs = {n: g["lr"] for g in groups for n in g["names"]}
    text = module.family.text_encoder_prefix
    assert text == "hf.model.text_backbone."
    assert {lr for n, lr in lrs.items() if n.startswith(text) and "bias" not in n} == {1e-5}
    assert {lr for n, lr in lrs.items() if not n.startswith(text) and "bias" not in n} == {1e-4}


# ------------------------------------------------------------------------------------------------
# DDP: 2 gloo processes, one image each, against one process with both


def _grads(module: FamilyAdaptation) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in module.model.named_parameters() if p.grad is not None}


def _worker(rank: int, world: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        module = module_for("grounding_dino_mini", "linear")
        module.train()
        ddp = torch.nn.parallel.DistributedDataParallel(TrainingStep(module))
        ddp(collate(module, [SAMPLES[rank]])).backward()
        if rank == 0:
            torch.save(_grads(module), out)
    finally:
        dist.destroy_process_group()


def test_one_ddp_step_has_the_single_process_gradient(tmp_path: Path):
    """Images with 2 and 1 boxes on two ranks: normalising each rank by its own boxes (transformers
    without accelerate) would weigh the second image's terms twice; the global count makes DDP's
    mean the single-process gradient."""
    out = tmp_path / "rank0.pt"
    mp.start_processes(
        _worker, args=(WORLD, str(tmp_path / "store"), str(out)), nprocs=WORLD, join=True, start_method="fork"
    )
    got = torch.load(out, weights_only=True)
    module = module_for("grounding_dino_mini", "linear")
    module.train()
    TrainingStep(module)(collate(module, SAMPLES)).backward()
    want = _grads(module)
    assert want and set(got) == set(want)
    for name, grad in want.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-5, atol=1e-7, msg=name)
