"""VLDyHead: the deep-fusion tower and the box / centerness / token-alignment predictions.

Tower layer i is three steps, at indices 3i, 3i+1, 3i+2 of ``dyhead_tower`` (official layout, so
the official parameter names hold inside ``head.``): ``VLFuse`` (image <-> text cross-attention),
``LanguageLayer`` (a fresh BERT layer on the text stream) and ``DyConv`` (the vision block). Without
early fusion (GLIP-T (A)) the tower is DyConv only. Every step maps ``(visual, lang, mask)`` to
``(visual, lang)``, so a forward hook on any step sees its intermediate output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.models.bert.modeling_bert import BertLayer

from adapt.model.config import GLIPConfig
from adapt.model.dyconv import DyConv
from adapt.model.fusion import VLFuse
from adapt.model.language import BERT_ATTENTION_CLAMPED, TextFeatures, additive_mask, bert_config

DOT_PRODUCT_CLAMP = 50000.0


@dataclass
class HeadOutputs:
    """Per FPN level l (P3..P7): ``bbox_reg[l]`` [B,4,H,W] (dx,dy,dw,dh after the level's Scale),
    ``centerness[l]`` [B,1,H,W] logits, ``dot_product_logits[l]`` [B,H*W,T] (row-major locations)."""

    bbox_reg: list[Tensor]
    centerness: list[Tensor]
    dot_product_logits: list[Tensor]


class Scale(nn.Module):
    """Learned per-level multiplier of the box deltas (init 1.0)."""

    def __init__(self, init: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([init]))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class LanguageLayer(BertLayer):
    """Official ``BertEncoderLayer``: a post-LN BERT layer that updates only the text stream.

    Its attention scores are clamped to [-50000, 50000] before the mask (see
    ``adapt.model.language``); the mask is HF's extended additive mask of the tokenizer mask.
    """

    def forward(self, visual: list[Tensor], lang: Tensor, mask: Tensor) -> tuple[list[Tensor], Tensor]:
        return visual, super().forward(lang, additive_mask(mask, lang.dtype))


class VisionLayer(DyConv):
    """DyConv as a tower step: updates only the visual stream."""

    def forward(  # type: ignore[override]
        self, visual: list[Tensor], lang: Tensor, mask: Tensor
    ) -> tuple[list[Tensor], Tensor]:
        return super().forward(visual), lang


class VLDyHead(nn.Module):
    """Tower + predictions. ``forward(features, text) -> HeadOutputs``."""

    def __init__(self, cfg: GLIPConfig) -> None:
        super().__init__()
        h = cfg.head
        lang_dim = cfg.language.hidden_size
        self.early_fusion = h.early_fusion
        tower: list[nn.Module] = []
        for _ in range(h.num_layers):
            if h.early_fusion:
                tower.append(
                    VLFuse(
                        h.channels,
                        lang_dim,
                        h.fusion_embed_dim,
                        h.fusion_heads,
                        h.fusion_dropout,
                        cfg.layer_scale_init,
                        h.use_checkpoint,
                    )
                )
                # Official USE_FUSED_FEATURES_DOT_PRODUCT: a BERT layer after every fusion (the
                # head's BERT layers use the language model's own sizes and dropout).
                tower.append(
                    LanguageLayer(bert_config(cfg.language, attn_implementation=BERT_ATTENTION_CLAMPED))
                )
            tower.append(VisionLayer(h.channels, h.group_norm_groups))
        self.dyhead_tower = nn.ModuleList(tower)

        # Legacy class head: frozen, its loss is multiplied by 0 and its output is never used;
        # kept only so that official checkpoints load without unexpected keys.
        self.cls_logits = nn.Conv2d(h.channels, h.legacy_num_classes, 1)
        self.bbox_pred = nn.Conv2d(h.channels, 4, 1)
        self.centerness = nn.Conv2d(h.channels, 1, 1)
        self.dot_product_projection_text = nn.Linear(lang_dim, h.channels)
        self.log_scale = nn.Parameter(torch.zeros(1))
        self.bias_lang = nn.Parameter(torch.zeros(lang_dim))
        bias_value = -math.log((1 - h.prior_prob) / h.prior_prob)
        self.bias0 = nn.Parameter(torch.tensor([bias_value]))
        self.scales = nn.ModuleList([Scale(1.0) for _ in cfg.anchors.strides])
        for conv in (self.cls_logits, self.bbox_pred, self.centerness):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)  # type: ignore[arg-type]  # built with biases
        nn.init.constant_(self.cls_logits.bias, bias_value)  # type: ignore[arg-type]
        self.cls_logits.requires_grad_(False)

    def tower(self, features: list[Tensor], text: TextFeatures) -> tuple[list[Tensor], Tensor]:
        """Run the fusion tower; returns the final visual maps and the text features to align with."""
        visual, lang = features, text.hidden
        for step in self.dyhead_tower:
            visual, lang = step(visual, lang, text.mask)
        # Official: with early fusion the dot product uses the fused `hidden`
        # (USE_FUSED_FEATURES_DOT_PRODUCT); GLIP-T (A) uses BERT's pad-zeroed `embedded`.
        if not self.early_fusion:
            assert text.embedded is not None
            lang = text.embedded
        return visual, lang

    def forward(self, features: list[Tensor], text: TextFeatures) -> HeadOutputs:
        return self.predict(*self.tower(features, text))

    def predict(self, visual: list[Tensor], lang: Tensor) -> HeadOutputs:
        """The prediction layers on the tower's output (apart so a frozen tower's output can be cached)."""
        # Token side of the alignment: L2-normalise, project (e / 2.0), per-token bias.
        tokens = F.normalize(lang, p=2, dim=-1)
        proj_tokens = self.dot_product_projection_text(tokens / 2.0)  # [B, T, C]
        token_bias = torch.matmul(tokens, self.bias_lang) + self.bias0  # [B, T]

        # Under autocast (bf16/fp16) the predictions are computed in low precision but returned in
        # fp32 (a no-op in fp32): the loss and the box decoding need it (a bf16 box coordinate near
        # 1333 px is off by up to 4 px). The logits are converted after the official clamp.
        bbox_reg, centerness, logits = [], [], []
        for level, x in enumerate(visual):
            bbox_reg.append(self.scales[level](self.bbox_pred(x)).float())
            centerness.append(self.centerness(x).float())
            queries = x.flatten(2).transpose(1, 2)  # [B, H*W, C]; the image side is not normalised
            logit = torch.matmul(queries, proj_tokens.transpose(-1, -2)) / self.log_scale.exp()
            logit = logit + token_bias[:, None, :]
            # Official CLAMP_DOT_PRODUCT.
            logits.append(logit.clamp(-DOT_PRODUCT_CLAMP, DOT_PRODUCT_CLAMP).float())
        return HeadOutputs(bbox_reg, centerness, logits)
