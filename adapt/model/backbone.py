"""Visual backbone: Swin (transformers ``SwinBackbone``) + FPN (torchvision) with GLIP's DropBlock.

The libraries compute the official numbers (see ``shared/docs/library_fit.md``); this module only
adds what GLIP does differently:

* the Swin block applies stochastic depth to the MLP branch as well (transformers only to the
  attention branch) -> a forward hook on every block's MLP;
* ``FREEZE_CONV_BODY_AT``: the patch embedding and the first stages are frozen *and* kept in eval
  mode on every ``.train()``;
* the FPN applies a DropBlock to the merged top-down sum before the 3x3 conv of P4 and P3, in
  training only (torchvision's FPN has no such hook, and torchvision's ``DropBlock2d`` draws
  different masks).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from transformers import SwinBackbone
from transformers import SwinConfig as HFSwinConfig

from adapt.model.config import GLIPConfig, SwinConfig


class DropBlock2d(nn.Module):
    """GLIP's DropBlock (official ``DropBlock2D``), not torchvision's.

    One Bernoulli(gamma = p / block_size^2) seed per (N, H, W) location, shared by all channels,
    seeds allowed everywhere (border blocks get clipped), dilated with a stride-1 max-pool, and the
    kept activations rescaled by numel / sum. torchvision's version draws per channel and corrects
    gamma for the valid region, which changes the drop rate.
    """

    def __init__(self, drop_prob: float, block_size: int) -> None:
        super().__init__()
        self.drop_prob = drop_prob
        self.block_size = block_size

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        gamma = self.drop_prob / self.block_size**2
        seeds = (torch.rand(x.shape[0], *x.shape[2:], device=x.device) < gamma).to(x.dtype)
        block = F.max_pool2d(seeds[:, None], self.block_size, stride=1, padding=self.block_size // 2)
        if self.block_size % 2 == 0:
            block = block[:, :, :-1, :-1]
        keep = 1.0 - block[:, 0]
        return x * keep[:, None] * (keep.numel() / keep.sum())

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}, block_size={self.block_size}"


def _hf_swin_config(cfg: SwinConfig) -> HFSwinConfig:
    n = len(cfg.depths)
    return HFSwinConfig(  # type: ignore[call-arg]  # out_features: the backbone mixin's keyword
        patch_size=4,
        num_channels=3,
        embed_dim=cfg.embed_dim,
        depths=list(cfg.depths),
        num_heads=list(cfg.num_heads),
        window_size=cfg.window_size,
        mlp_ratio=cfg.mlp_ratio,
        qkv_bias=True,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        drop_path_rate=cfg.drop_path_rate,
        hidden_act="gelu",
        use_absolute_embeddings=False,
        layer_norm_eps=1e-5,
        # Official "SWINT-FPN-RETINANET": the stride-4 output (norm0) is an Identity and unused;
        # the FPN reads stages 2..4 (strides 8, 16, 32), each through its own LayerNorm.
        out_features=[f"stage{i}" for i in range(2, n + 1)],
    )


class SwinBody(SwinBackbone):
    """Swin with the official GLIP block and freezing behaviour. Returns stages 2..4 as NCHW maps."""

    def __init__(self, cfg: SwinConfig) -> None:
        super().__init__(_hf_swin_config(cfg))
        # The official backbone has no final LayerNorm after the last stage (only the per-stage
        # output norms), so it is not a parameter here either.
        self.swin.layernorm = nn.Identity()  # type: ignore[assignment]
        # Official Swin block: x = x + drop_path(attn(norm1(x))); x = x + drop_path(mlp(norm2(x))).
        # transformers applies drop_path to the attention branch only: add it on the MLP output.
        # The same module draws an independent mask on each call, as the official block does.
        stage: Any
        for stage in self.swin.encoder.layers:
            for block in stage.blocks:
                if not isinstance(block.drop_path, nn.Identity):
                    block.mlp.register_forward_hook(_drop_path_hook(block.drop_path))
        self.freeze_at = cfg.freeze_at
        for module in self.frozen_modules():
            module.requires_grad_(False)

    def frozen_modules(self) -> list[nn.Module]:
        """Official FREEZE_CONV_BODY_AT: k >= 0 freezes the patch embedding, k >= 2 also the
        first k - 1 stages (2 = patch embedding + stage 1, the ODinW fine-tuning setting)."""
        if self.freeze_at < 0:
            return []
        stages = list(self.swin.encoder.layers)[: max(self.freeze_at - 1, 0)]
        return [self.swin.embeddings, *stages]

    def train(self, mode: bool = True) -> SwinBody:
        super().train(mode)
        # Official _freeze_stages is re-applied on every .train(): frozen parts stay in eval mode.
        for module in self.frozen_modules():
            module.eval()
        return self

    def forward(self, pixel_values: Tensor) -> list[Tensor]:  # type: ignore[override]
        return list(super().forward(pixel_values).feature_maps)


def _drop_path_hook(drop_path: nn.Module):
    def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        return drop_path(output)

    return hook


class FPN(FeaturePyramidNetwork):
    """torchvision FPN + P6/P7 from P5, with GLIP's DropBlock before the 3x3 of P4 and P3."""

    def __init__(self, in_channels: list[int], out_channels: int, drop_prob: float, block_size: int) -> None:
        # Official LastLevelP6P7(256, 256): in == out channels, so P6 is computed from P5.
        super().__init__(in_channels, out_channels, extra_blocks=LastLevelP6P7(out_channels, out_channels))
        self.drop_block = DropBlock2d(drop_prob, block_size)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        """Stage maps (finest first) -> [P3, P4, P5, P6, P7]."""
        last_inner = self.inner_blocks[-1](features[-1])
        results = [self.layer_blocks[-1](last_inner)]
        for idx in range(len(features) - 2, -1, -1):
            lateral = self.inner_blocks[idx](features[idx])
            top_down = F.interpolate(last_inner, size=lateral.shape[-2:], mode="nearest")
            last_inner = lateral + top_down
            # GLIP quirk: DropBlock on the merged sum feeding the 3x3 (P4, P3; training only); the
            # un-dropped sum continues down the top-down path.
            results.insert(0, self.layer_blocks[idx](self.drop_block(last_inner)))
        names = [str(i) for i in range(len(results))]
        results, _ = self.extra_blocks(results, features, names)
        return results


class Backbone(nn.Module):
    """``backbone.body`` (Swin) + ``backbone.fpn``: images [B,3,H,W] -> 5 maps P3..P7."""

    def __init__(self, cfg: GLIPConfig) -> None:
        super().__init__()
        self.body = SwinBody(cfg.swin)
        self.fpn = FPN(
            list(cfg.swin_out_channels), cfg.head.channels, cfg.fpn.drop_block_prob, cfg.fpn.drop_block_size
        )

    def forward(self, images: Tensor) -> list[Tensor]:
        return self.fpn(self.body(images))


__all__ = ["FPN", "Backbone", "DropBlock2d", "SwinBody"]
