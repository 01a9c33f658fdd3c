"""Helpers of the training tests: the mini model, the oracle fixture and composed job configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

import adapt
from adapt.model import GLIP, GLIPConfig, build_glip, load_checkpoint

CONF = Path(adapt.__file__).parent / "conf"
FIXTURE = Path(__file__).parents[1] / "fixtures" / "glip_mini_oracle"
# Tiny inputs keep every forward pass under a second on 2 CPU cores.
TINY_INPUT = [
    "model.arch.input.min_size_train=[96]",
    "model.arch.input.max_size_train=128",
    "model.arch.input.min_size_test=96",
    "model.arch.input.max_size_test=128",
]


def mini_arch(**swin: object) -> dict:
    arch = yaml.safe_load((CONF / "model" / "glip_mini.yaml").read_text())["arch"]
    arch["swin"].update(swin)
    return arch


def mini_model(weights: bool = False, **swin: object) -> GLIP:
    model = build_glip(GLIPConfig.from_dict(mini_arch(**swin)))
    if weights:
        load_checkpoint(model, FIXTURE / "mini_glip.pth")
    return model


def compose_job(*overrides: str):
    """The job config as `python -m adapt.run` composes it (trainer=debug, logger=none, no workers),
    on the random-init glip_mini these tests compare numbers with (the default is pretrained)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            config_name="config",
            overrides=[
                *("model=glip_mini", "trainer=debug", "logger=none", "data.num_workers=0"),
                *TINY_INPUT,
                *overrides,
            ],
        )


def oracle_train_batch(io: dict) -> dict:
    """The oracle fixture's training batch as the LightningModule takes it.

    Each image has its own caption in the fixture, so the batch carries its own tokens; the
    targets are the official binarised positive maps, split per image.
    """
    import torch

    train = io["train"]
    rows = train["positive_map"].split([len(b) for b in train["target_boxes_xyxy"]])
    targets = [
        {"boxes": torch.as_tensor(b, dtype=torch.float32), "positive_map": r}
        for b, r in zip(train["target_boxes_xyxy"], rows, strict=True)
    ]
    tokens = train["intermediates"]["tokenizer_input"]
    return {
        "images": io["inputs"]["batched_images"],
        "image_sizes": [tuple(s) for s in io["inputs"]["image_sizes_hw"]],
        "targets": targets,
        "input_ids": tokens["input_ids"],
        "attention_mask": tokens["attention_mask"],
    }


# LoRA on two fusion projections of the mini model: a small peft LoraConfig node, as conf/mode/lora.yaml
# builds it with Hydra.
LORA_TARGETS = r".*dyhead_tower\.\d+\.b_attn\.attn\.(v_proj|l_proj)"
LORA_CONFIG = {"_target_": "peft.LoraConfig", "r": 2, "lora_alpha": 4, "target_modules": LORA_TARGETS}


def mode_cfg(mode: str) -> dict:
    """The mode config a test builds a policy from: the registered name (LoRA with its small config)."""
    if mode == "lora":
        return {"name": "lora", "policy": {"_target_": "adapt.modes.LoRA", "config": LORA_CONFIG}}
    return {"name": mode}


def apply_export(export, model: GLIP):
    """Put ``export`` onto ``model`` the way Detector.from_export does (its policy, by name)."""
    from adapt.modes import policy_for_export

    policy_for_export(export.policy_name).load_export(export, model)
    return model


class TrainingStep(torch.nn.Module):
    """What Lightning's DDP wrapper calls: one training step of a LightningModule (GLIP's or a
    detector family's), so a test can wrap it in DistributedDataParallel itself."""

    def __init__(self, module: L.LightningModule) -> None:
        super().__init__()
        self.module = module

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        self.module.on_train_batch_start(batch, 0)
        loss = self.module.training_step(batch, 0)
        assert loss is not None
        return loss
