"""GLIP: the grounded detector, reading top to bottom the way data flows.

images -> Swin + FPN -> 5 maps; tokens -> BERT -> text features (+ the prompt offset); both ->
VLDyHead (fusion tower, box / centerness / token-alignment logits); then the ATSS loss in
training or the post-processor in evaluation. Official equivalent: ``GeneralizedVLRCNN`` with
``RPN_ONLY`` and ``VLDyHeadModule``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from adapt.model.anchors import AnchorGenerator
from adapt.model.backbone import Backbone
from adapt.model.config import GLIPConfig
from adapt.model.context_prompt import ContextPrompt
from adapt.model.ensemble import combine_prompts, label_maps_of
from adapt.model.head import VLDyHead
from adapt.model.language import TextFeatures, build_language_backbone, encode_text
from adapt.model.loss import ATSSLoss
from adapt.model.postprocess import PostProcessor


class GLIP(nn.Module):
    """The detector. Parameter names follow ``docs/DESIGN.md`` (the checkpoint loader's map)."""

    def __init__(self, cfg: GLIPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone(cfg)
        self.language_backbone = build_language_backbone(cfg.language)
        self.head = VLDyHead(cfg)
        self.anchor_generator = AnchorGenerator(cfg.anchors.sizes, cfg.anchors.strides)
        self.loss = ATSSLoss(
            topk=cfg.loss.topk,
            reg_loss_weight=cfg.loss.reg_loss_weight,
            focal_alpha=cfg.loss.focal_alpha,
            focal_gamma=cfg.loss.focal_gamma,
        )
        self.postprocessor = PostProcessor(
            score_threshold=cfg.inference.score_threshold,
            pre_nms_top_n=cfg.inference.pre_nms_top_n,
            nms_threshold=cfg.inference.nms_threshold,
            detections_per_image=cfg.inference.detections_per_image,
        )
        # Official prompt tuning (tunable_linear): absent until enable_prompt_tuning().
        self.prompt_offset: nn.Parameter | None
        self.register_parameter("prompt_offset", None)
        # Learned context vectors in BERT's input (CoOp, adapt.model.context_prompt), when a mode adds them.
        self.context_prompt: ContextPrompt | None = None

    def enable_prompt_tuning(self) -> nn.Parameter:
        """Add the official prompt-tuning offset (``tunable_linear``), zero-initialised.

        One vector per token position [max_query_len, lang_dim], added to BERT's output before the
        head; with a fixed caption per task this is a per-token soft prompt.
        """
        if self.prompt_offset is None:
            ref = self.head.bias_lang
            shape = (self.cfg.language.max_query_len, self.cfg.language.hidden_size)
            self.prompt_offset = nn.Parameter(torch.zeros(shape, dtype=ref.dtype, device=ref.device))
        return self.prompt_offset

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> TextFeatures:
        """BERT features of tokenised prompts [B, L]; reusable across images of the same prompt."""
        if self.context_prompt is not None:
            return self.context_prompt.encode(self.language_backbone, input_ids, attention_mask)
        return encode_text(self.language_backbone, input_ids, attention_mask)

    def text_parameters(self) -> list[nn.Parameter]:
        """Every parameter :meth:`encode_text` reads: its output can be reused while none trains."""
        context = list(self.context_prompt.parameters()) if self.context_prompt is not None else []
        return [*self.language_backbone.parameters(), *context]

    def forward(
        self,
        images: Tensor,
        image_sizes: Sequence[tuple[int, int]],
        text: TextFeatures | Sequence[TextFeatures] | None = None,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        targets: Sequence[Mapping[str, Any]] | None = None,
        label_to_tokens: Mapping[int, Sequence[int]] | Sequence[Mapping[int, Sequence[int]]] | None = None,
        features: list[Tensor] | None = None,
        fused: tuple[list[Tensor], Tensor] | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses (``targets`` given) or detections per image in network-input pixels.

        Args:
            images: [B, 3, H, W] from ``preprocess.batch_images`` (H, W multiples of 32).
            image_sizes: un-padded (h, w) per image (box clipping).
            text: precomputed ``encode_text`` output; else ``input_ids``/``attention_mask`` [B, L]. A
                list (with one ``label_to_tokens`` per prompt) detects with a prompt ensemble.
            targets: per image dict(boxes=[n, 4] xyxy (+1 convention), and positive_map=[n, L]
                binary token targets, or labels=[n] turned into one through ``label_to_tokens``).
            label_to_tokens: label (1-based) -> token positions of its phrase; scores a class as the
                mean of its tokens' probabilities at inference.
            features: the backbone's P3..P7 for ``images``, computed before (skips Swin + FPN).
            fused: the tower's (visual maps, token features) for ``images`` and ``text``, computed
                before (skips the backbone and the tower; ``adapt.train.feature_cache``).
        """
        if isinstance(text, Sequence) or isinstance(label_to_tokens, Sequence):  # a prompt ensemble
            return self._ensemble(images, image_sizes, text, label_to_tokens, features, targets, fused)
        if text is None:
            if input_ids is None or attention_mask is None:
                raise ValueError("GLIP.forward needs `text` or `input_ids` and `attention_mask`")
            text = self.encode_text(input_ids, attention_mask)
        if self.prompt_offset is not None:
            text = text.with_offset(self.prompt_offset)
        if fused is not None:
            features = fused[0]
            outputs = self.head.predict(*fused)
        else:
            if features is None:
                features = self.backbone(images)  # P3..P7, [B, C, H_l, W_l]
            outputs = self.head(features, text)
        anchors = self.anchor_generator([tuple(f.shape[-2:]) for f in features], device=images.device)

        if targets is not None:
            length = text.mask.shape[1]
            prepared = [_with_positive_map(t, label_to_tokens, length) for t in targets]
            return self.loss(
                outputs.bbox_reg, outputs.centerness, outputs.dot_product_logits, anchors, prepared, text.mask
            )
        if label_to_tokens is None:
            raise ValueError("GLIP.forward needs `label_to_tokens` to turn token scores into class scores")
        return self.postprocessor(
            outputs.bbox_reg,
            outputs.centerness,
            outputs.dot_product_logits,
            anchors,
            list(image_sizes),
            {int(k): list(v) for k, v in label_to_tokens.items()},
        )

    def _ensemble(
        self,
        images: Tensor,
        image_sizes: Sequence[tuple[int, int]],
        text: TextFeatures | Sequence[TextFeatures] | None,
        label_to_tokens: Mapping[int, Sequence[int]] | Sequence[Mapping[int, Sequence[int]]] | None,
        features: list[Tensor] | None,
        targets: Sequence[Mapping[str, Any]] | None,
        fused: tuple[list[Tensor], Tensor] | None,
    ) -> list[dict[str, Tensor]]:
        """:meth:`forward` with a list of texts and one label map per text (same labels): a prompt
        ensemble, detections combined at the class-score level (``adapt.model.ensemble``), inference only."""
        if (
            not isinstance(text, Sequence)
            or isinstance(label_to_tokens, Mapping)
            or label_to_tokens is None
            or targets is not None
            or fused is not None
        ):
            raise ValueError(
                "a prompt ensemble (a list of text features) detects only: give one label_to_tokens "
                "per prompt, and no targets or fused features (one text takes one label_to_tokens map)"
            )
        maps = label_maps_of(text, label_to_tokens)
        if features is None:
            features = self.backbone(images)  # once for all prompts
        outputs = [
            self.head(features, t.with_offset(self.prompt_offset) if self.prompt_offset is not None else t)
            for t in text
        ]
        anchors = self.anchor_generator([tuple(f.shape[-2:]) for f in features], device=images.device)
        bbox_reg, centerness, scores = combine_prompts(outputs, maps)
        return self.postprocessor.forward_scores(bbox_reg, centerness, scores, anchors, list(image_sizes))


def _with_positive_map(
    target: Mapping[str, Any], label_to_tokens: Mapping[int, Sequence[int]] | None, length: int
) -> dict[str, Tensor]:
    """A loss target: boxes + binary token targets (the official collator binarises them)."""
    if "positive_map" in target:
        return {"boxes": target["boxes"], "positive_map": target["positive_map"]}
    if label_to_tokens is None:
        raise ValueError("targets without `positive_map` need `label_to_tokens` to build it from `labels`")
    from adapt.prompt import positive_map

    pm = positive_map({int(k): list(v) for k, v in label_to_tokens.items()}, target["labels"], length)
    return {"boxes": target["boxes"], "positive_map": pm.to(target["boxes"].device)}


def build_glip(cfg: GLIPConfig | Mapping[str, Any] | None = None, seed: int | None = 0) -> GLIP:
    """A GLIP with random weights (official init schemes), drawn from ``seed`` without touching
    the global RNG, so an untrained model (the demo's glip_mini) is the same on every run."""
    if not isinstance(cfg, GLIPConfig):
        cfg = GLIPConfig.from_dict(dict(cfg) if cfg is not None else None)
    if seed is None:
        return GLIP(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GLIP(cfg)
