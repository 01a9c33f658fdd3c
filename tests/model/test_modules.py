"""GLIP-specific behaviour the oracle's eval pass cannot see: training-only regularisers, freezing,
the GLIP-T (A) variant, padding, and the DyConv offset quirk."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from torch import nn

from adapt.model import GLIP, GLIPConfig, TextFeatures, batch_images, build_glip, official_state_dict
from adapt.model.backbone import DropBlock2d, SwinBody
from adapt.model.config import SwinConfig
from adapt.model.dyconv import _reinterpret
from adapt.model.head import LanguageLayer, VisionLayer

CONF = Path(__file__).parents[2] / "adapt" / "conf" / "model"


def config(name: str, **sections: dict) -> GLIPConfig:
    arch = yaml.safe_load((CONF / f"{name}.yaml").read_text())["arch"]
    for section, values in sections.items():
        arch[section].update(values)
    return GLIPConfig.from_dict(arch)


# --------------------------------------------------------------------------------------------------
# DropBlock (GLIP's, not torchvision's)


def test_dropblock_is_identity_in_eval():
    x = torch.randn(2, 4, 9, 9)
    assert DropBlock2d(0.3, 3).eval()(x) is x


def test_dropblock_mask_shared_by_channels_and_rescaled():
    torch.manual_seed(0)
    block = DropBlock2d(0.3, 3).train()
    x = torch.ones(2, 5, 16, 20)
    out = block(x)
    kept = out[:, 0] > 0
    # One mask per (N, H, W), identical in every channel.
    assert torch.equal(out, out[:, :1].expand_as(out))
    # Kept activations rescaled by numel / sum of the kept mask.
    scale = kept.numel() / kept.sum()
    torch.testing.assert_close(out[:, 0][kept], torch.full_like(out[:, 0][kept], scale.item()))
    # Every dropped pixel lies in a 3x3 block: dropped region = dilated seeds.
    dropped = (~kept).float()[:, None]
    assert torch.equal(nn.functional.max_pool2d(dropped, 3, 1, 1) >= dropped, torch.ones_like(dropped).bool())


def test_dropblock_rate_matches_glip_not_torchvision():
    """gamma = p / bs^2 per position with border blocks clipped: an interior pixel is dropped with
    probability 1 - (1 - gamma)^9 (~0.26 for p = 0.3), a corner pixel 1 - (1 - gamma)^4 (~0.13)."""
    torch.manual_seed(0)
    block = DropBlock2d(0.3, 3).train()
    out = block(torch.ones(4000, 1, 7, 10))
    drop = (out[:, 0] == 0).float().mean(0)
    gamma = 0.3 / 9
    assert abs(drop[3, 5].item() - (1 - (1 - gamma) ** 9)) < 0.03
    assert abs(drop[0, 0].item() - (1 - (1 - gamma) ** 4)) < 0.03


# --------------------------------------------------------------------------------------------------
# Swin: drop path on both branches, freezing


def test_swin_drop_path_on_attention_and_mlp_branch():
    body = SwinBody(
        SwinConfig(embed_dim=8, depths=(2, 2), num_heads=(1, 2), drop_path_rate=0.5, freeze_at=-1)
    )
    calls = []
    block = body.swin.encoder.layers[1].blocks[1]
    block.drop_path.register_forward_hook(lambda m, a, o: calls.append(m.training))
    body.train()(torch.randn(1, 3, 64, 64))
    assert calls == [True, True]  # the attention branch (transformers) and the MLP branch (GLIP)


def test_freeze_at_two_freezes_stem_and_first_stage():
    body = SwinBody(SwinConfig(embed_dim=8, depths=(2, 2, 2), num_heads=(1, 2, 4), freeze_at=2)).train()
    frozen = {n for n, p in body.named_parameters() if not p.requires_grad}
    assert frozen == {
        n for n, _ in body.named_parameters() if n.startswith(("swin.embeddings.", "swin.encoder.layers.0."))
    }
    assert not body.swin.embeddings.training and not body.swin.encoder.layers[0].training
    assert body.swin.encoder.layers[1].training


# --------------------------------------------------------------------------------------------------
# GLIP-T (A): no fusion, dot product on BERT's pad-zeroed output


def test_glip_t_a_structure_and_official_keys():
    with torch.device("meta"):
        model = GLIP(config("glip_t_a"))
    assert all(isinstance(step, VisionLayer) for step in model.head.dyhead_tower)
    keys = official_state_dict(model)
    assert not any(".b_attn." in k for k in keys)
    assert {k.split(".")[3] for k in keys if k.startswith("rpn.head.dyhead_tower.")} == {
        str(i) for i in range(6)
    }


def test_no_fusion_aligns_with_embedded_features():
    cfg = config("glip_mini", head={"early_fusion": False})
    model = build_glip(cfg).eval()
    assert not any(isinstance(s, LanguageLayer) for s in model.head.dyhead_tower)
    hidden = torch.randn(1, 256, cfg.language.hidden_size)
    mask = torch.zeros(1, 256, dtype=torch.long)
    mask[0, :5] = 1
    other = hidden.clone()
    other[0, 5:] = torch.randn(251, cfg.language.hidden_size)  # different values at the pads
    features = model.backbone(torch.randn(1, 3, 64, 96))
    with torch.no_grad():
        out = model.head(features, TextFeatures(hidden, mask))
        again = model.head(features, TextFeatures(other, mask))
    # `embedded` zeroes the pads, so what BERT left there cannot reach any logit.
    for a, b in zip(out.dot_product_logits, again.dot_product_logits, strict=True):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------------------------------
# Prompt offset and preprocessing


def test_prompt_offset_added_to_hidden_and_embedded():
    hidden = torch.randn(2, 6, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]])
    offset = torch.randn(8, 4)
    text = TextFeatures(hidden, mask).with_offset(offset)
    torch.testing.assert_close(text.hidden, hidden + offset[:6])
    # Official: embedded = hidden * mask, *then* += offset (pads carry the offset).
    torch.testing.assert_close(text.embedded, hidden * mask[..., None] + offset[:6])


def test_batch_images_pads_bottom_right_to_32():
    images = [torch.rand(3, 50, 70), torch.rand(3, 65, 40)]
    batch, sizes = batch_images(images)
    assert batch.shape == (2, 3, 96, 96) and sizes == [(50, 70), (65, 40)]
    assert not batch[0, :, 50:].any() and not batch[0, :, :, 70:].any()
    # BGR, x255, official mean/std (BGR order).
    expected_blue = (images[1][2] * 255 - 103.530) / 57.375
    torch.testing.assert_close(batch[1, 0, :65, :40], expected_blue)


# --------------------------------------------------------------------------------------------------
# DyConv: the coarser-level offsets are read with the kernel's pointer arithmetic


def test_coarser_level_offsets_reinterpret_memory():
    offsets = torch.arange(2 * 18 * 4 * 6, dtype=torch.float32).view(2, 18, 4, 6)
    coarse = _reinterpret(offsets, 2, 3)
    for b in range(2):
        assert torch.equal(coarse[b], offsets[b].reshape(-1)[: 18 * 2 * 3].view(18, 2, 3))
    assert not torch.equal(coarse, offsets[:, :, :2, :3])  # not a crop
    assert _reinterpret(offsets, 4, 6) is offsets


def test_glip_mini_trains_end_to_end():
    """Training mode (dropout, DropPath, DropBlock, fusion checkpointing on): finite losses, and
    gradients reach the head and the first Swin stage."""
    cfg = config("glip_mini")
    model = build_glip(cfg).train()
    ids = torch.tensor([[101, 3869, 102] + [0] * 253])
    mask = (ids > 0).long()
    images = torch.randn(1, 3, 64, 64)
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0]]), "labels": torch.tensor([1])}]
    losses = model(
        images, [(64, 64)], input_ids=ids, attention_mask=mask, targets=targets, label_to_tokens={1: [1]}
    )
    assert set(losses) >= {"loss_reg", "loss_centerness", "loss_dot_product_token", "total"}
    assert torch.isfinite(losses["total"])
    losses["total"].backward()
    assert (
        model.head.bias0.grad is not None and model.backbone.body.swin.embeddings.norm.weight.grad is not None
    )
    assert model.head.cls_logits.weight.grad is None  # legacy head: frozen, unused
