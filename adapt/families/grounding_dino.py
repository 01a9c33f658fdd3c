"""Grounding DINO and MM Grounding DINO (also LLMDet) through transformers' own classes.

The detector is ``GroundingDinoForObjectDetection`` / ``MMGroundingDinoForObjectDetection`` as
transformers ships it; the processor (``GroundingDinoProcessor``) resizes, normalises and pads; the
loss is transformers' (Hungarian matcher, focal token loss, L1 and GIoU, the two-stage encoder term,
``auxiliary_loss`` for every decoder layer). This adapter adds the text-feature seam: BERT runs once
per prompt (:meth:`GroundingDino.encode_text`, with transformers' own phrase masks and position ids)
and transformers' forward reads those features through a stand-in text backbone
(``adapt.families.text_features.given_text``).

LLMDet checkpoints are MM Grounding DINO models (same ``model_type``, inference only, per their
model cards), so ``model=llmdet_t`` is the ``mm_grounding_dino`` family with other weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor
from transformers import (
    GroundingDinoConfig,
    GroundingDinoForObjectDetection,
    GroundingDinoImageProcessor,
    GroundingDinoProcessor,
    MMGroundingDinoConfig,
    MMGroundingDinoForObjectDetection,
    PreTrainedModel,
)
from transformers.models.grounding_dino.modeling_grounding_dino import (
    build_label_maps,
    generate_masks_with_special_tokens_and_transfer_map,
)

from adapt.families.base import DetectorFamily, ImageBatch, RawOutputs
from adapt.families.captions import encode_grounding_prompt
from adapt.prompt import EncodedPrompt

# The fusion's image-text cross-attention and the decoder's linears (self-attention, text
# cross-attention, the deformable attention's value/output projections, the feed-forward).
LORA_TARGETS = (
    r"model\.encoder\.layers\.\d+\.fusion_layer\.attn\."
    r"(vision_proj|text_proj|values_vision_proj|values_text_proj|out_vision_proj|out_text_proj)"
    r"|model\.decoder\.layers\.\d+\.(self_attn|encoder_attn_text)\.(query|key|value|out_proj)"
    r"|model\.decoder\.layers\.\d+\.encoder_attn\.(value_proj|output_proj)"
    r"|model\.decoder\.layers\.\d+\.(fc1|fc2)"
)


class GroundingDino(DetectorFamily):
    """Grounding DINO (IDEA-Research): Swin + BERT, a fusion encoder, a DINO decoder whose queries
    are scored against the caption's tokens.

    Modes (``adapt.families.modes``):

    * ``prompt``: a zero-initialised offset per caption token on BERT's output (GLIP's prompt
      tuning: rows = ``max_text_len``), everything else frozen and in eval mode.
    * ``linear``: a linear probe of a DETR-style head is the layers that read the last frozen
      features, here the decoder's queries and the two-stage encoder proposals: the decoder's output
      LayerNorm (an elementwise affine map of the query features both heads read, the only linear
      handle on the classification, whose head is a parameter-free dot product with the text), the
      box MLP ``bbox_embed`` (shared by all decoder layers, so it also moves their reference points),
      the two-stage proposal heads (``enc_output_norm``, ``encoder_output_bbox_embed``) and the class
      heads' parameters (MM Grounding DINO's logit bias; none in Grounding DINO). ``text_projection``
      is left frozen: it feeds the fusion encoder, so training it re-runs the frozen trunk on new
      inputs, which is prompt tuning's job. Everything runs in eval mode.
    * ``full``: every parameter, dropout and drop-path on (transformers' training behaviour).
    * ``lora``: peft adapters on the fusion's and the decoder's linears (:data:`LORA_TARGETS`);
      Swin and BERT in eval mode, the encoder and decoder in train mode (as GLIP's LoRA).
    """

    name = "grounding_dino"
    model_types = ("grounding-dino",)
    model_class: ClassVar[type[PreTrainedModel]] = GroundingDinoForObjectDetection
    config_class: ClassVar[type] = GroundingDinoConfig
    processor_class = GroundingDinoProcessor
    vision_modules = ("model.backbone",)
    text_encoder = "model.text_backbone"
    linear_modules = (
        "model.decoder.layer_norm",
        "bbox_embed",
        "class_embed",
        "model.enc_output_norm",
        "model.encoder_output_bbox_embed",
        "model.encoder_output_class_embed",
    )
    lora_targets = LORA_TARGETS
    default_threshold = 0.25  # post_process_grounded_object_detection's default

    @classmethod
    def build_processor(
        cls, tokenizer: Any, image_processor_kwargs: dict[str, Any]
    ) -> GroundingDinoProcessor:
        """The processor of a random-init model: transformers' image processor (with these
        settings) and adapt's shipped BERT tokenizer."""
        return GroundingDinoProcessor(
            image_processor=GroundingDinoImageProcessor(**image_processor_kwargs), tokenizer=tokenizer
        )

    # -- prompts ------------------------------------------------------------------------------------

    @property
    def text_limit(self) -> int:
        return int(self.hf.config.max_text_len)

    def encode_prompt(self, class_names: Sequence[str], labels: Sequence[int] | None = None) -> EncodedPrompt:
        return encode_grounding_prompt(
            class_names, self.tokenizer, self.text_limit, labels, delimiter_groups=phrase_groups
        )

    # -- text ---------------------------------------------------------------------------------------

    def encode_text(self, prompt: EncodedPrompt) -> Tensor:
        """BERT's ``last_hidden_state`` [1, L, H] for the caption, called exactly as transformers'
        ``GroundingDinoModel.forward`` calls it: phrase-blocked self-attention and per-phrase
        position ids (``generate_masks_with_special_tokens_and_transfer_map``), zero token types."""
        inner: Any = self.hf.model
        ids = prompt.input_ids[None].to(self.device)
        masks, position_ids = generate_masks_with_special_tokens_and_transfer_map(ids, inner.special_tokens)  # type: ignore[arg-type]
        out = inner.text_backbone(ids, masks[:, None], torch.zeros_like(ids), position_ids, return_dict=True)
        return out.last_hidden_state

    def offset_shape(self, prompt: EncodedPrompt | None) -> tuple[int, int]:
        return self.text_limit, int(self.hf.config.text_config.hidden_size)

    def drop_text_encoder(self) -> None:
        self.hf.model.text_backbone = None
        self.text_encoder_dropped = True

    # -- forward ------------------------------------------------------------------------------------

    def box_scale(self, sizes: Sequence[tuple[int, int]]) -> Tensor:
        # post_process_grounded_object_detection: boxes relative to the image, scaled by (w, h).
        return torch.tensor([[w, h, w, h] for h, w in sizes], dtype=torch.float32)

    def run(
        self,
        batch: ImageBatch,
        prompt: EncodedPrompt,
        text: Tensor,
        labels: list[dict[str, Tensor]] | None = None,
    ) -> RawOutputs:
        from adapt.families.text_features import given_text

        n = len(batch)
        ids = prompt.input_ids[None].expand(n, -1).to(self.device)
        mask = prompt.attention_mask[None].expand(n, -1).to(self.device)
        with given_text(self.hf.model, "text_backbone", text):
            out = self.hf(
                pixel_values=batch.pixel_values,
                input_ids=ids,
                attention_mask=mask,
                pixel_mask=batch.pixel_mask,
                labels=labels,
                return_dict=True,
            )
        return RawOutputs(
            out.logits, out.pred_boxes, out.loss, dict(out.loss_dict) if labels is not None else None
        )


class MMGroundingDino(GroundingDino):
    """MM Grounding DINO (OpenMMLab) and LLMDet: Grounding DINO with a scaled, biased contrastive
    class head and unshared decoder heads; the same modes (its class heads' bias is in ``linear``)."""

    name = "mm_grounding_dino"
    model_types = ("mm-grounding-dino",)
    model_class = MMGroundingDinoForObjectDetection
    config_class = MMGroundingDinoConfig


def phrase_groups(input_ids: Tensor) -> list[list[int]]:
    """The token positions transformers' loss assigns to each phrase (``build_label_maps``)."""
    maps = build_label_maps(torch.empty(1, 1, input_ids.shape[-1]), input_ids[None])[0]  # type: ignore[arg-type]
    return [row.nonzero().flatten().tolist() for row in maps]
