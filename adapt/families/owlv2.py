"""OWLv2 through transformers' ``Owlv2ForObjectDetection`` and ``Owlv2Processor``.

OWLv2 scores every image patch against one embedding per class query. transformers' forward
re-encodes the queries for every image of a batch; this adapter encodes them once
(:meth:`OWLv2.encode_text`: ``get_text_features``, the class embeddings before their normalisation)
and assembles the detection from transformers' own pieces in the order its forward uses them
(``image_embedder``, ``class_predictor``, ``box_predictor``), as transformers' own
``image_guided_detection`` does with image queries.

transformers ships no training loss for OWLv2. OWL-ViT and OWLv2 are trained with DETR's bipartite
matching loss using a focal sigmoid classification term, which is transformers' Deformable DETR loss
(``DeformableDetrHungarianMatcher`` + ``DeformableDetrImageLoss``: focal, L1, GIoU); adapt applies it
as is, with Deformable DETR's default weights unless the model config's ``loss:`` sets them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor
from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor
from transformers.loss.loss_deformable_detr import DeformableDetrForObjectDetectionLoss

from adapt.families.base import DetectorFamily, ImageBatch, RawOutputs
from adapt.families.captions import encode_query_prompt
from adapt.families.spec import InferenceSettings
from adapt.prompt import EncodedPrompt

# transformers' DeformableDetrConfig defaults (matcher costs, loss weights, focal alpha).
DEFAULT_LOSS = {
    "class_cost": 1.0,
    "bbox_cost": 5.0,
    "giou_cost": 2.0,
    "bbox_loss_coefficient": 5.0,
    "giou_loss_coefficient": 2.0,
    "focal_alpha": 0.25,
}
# The ViT's attention projections: the features every head reads.
LORA_TARGETS = r"owlv2\.vision_model\.encoder\.layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|out_proj)"


class OWLv2(DetectorFamily):
    """OWLv2 (Google): a CLIP ViT whose patch tokens become boxes, scored against class queries.

    Modes (``adapt.families.modes``):

    * ``prompt``: a zero-initialised offset per class on its class embedding (the projected query
      before normalisation): OWLv2's text features are one vector per class, so its prompt is the
      class embeddings themselves; everything else frozen and in eval mode.
    * ``linear``: OWLv2's own heads on the frozen ViT features: the class head (``dense0``, the
      projection of patch features into the class-embedding space, plus the per-patch logit shift
      and scale) and the box MLP. These are exactly the layers that read the last frozen features;
      the objectness head is left out (it never enters the loss or the detections).
    * ``full``: every parameter.
    * ``lora``: peft adapters on the ViT's attention projections (:data:`LORA_TARGETS`; OWLv2 has no
      fusion and no decoder, the ViT is where image and class meet).
    """

    name = "owlv2"
    model_types = ("owlv2",)
    model_class = Owlv2ForObjectDetection
    config_class = Owlv2Config
    processor_class = Owlv2Processor
    vision_modules = ("owlv2.vision_model",)
    text_encoder = "owlv2.text_model"
    linear_modules = ("class_head", "box_head")
    lora_targets = LORA_TARGETS
    default_threshold = 0.1  # post_process_grounded_object_detection's default

    def __init__(
        self, hf: Owlv2ForObjectDetection, processor: Owlv2Processor, settings: InferenceSettings
    ) -> None:
        super().__init__(hf, processor, settings)
        self.loss_weights = dict(DEFAULT_LOSS)

    def set_loss_weights(self, weights: Mapping[str, float]) -> None:
        unknown = sorted(set(weights) - set(DEFAULT_LOSS))
        if unknown:
            raise ValueError(f"loss.{unknown[0]}: OWLv2's loss weights are {sorted(DEFAULT_LOSS)}")
        self.loss_weights.update({k: float(v) for k, v in weights.items()})

    @classmethod
    def build_processor(cls, tokenizer: Any, image_processor_kwargs: dict[str, Any]) -> Owlv2Processor:
        """The processor of a random-init model: transformers' image processor (with these
        settings) and adapt's shipped CLIP-format tokenizer."""
        return Owlv2Processor(
            image_processor=Owlv2ImageProcessor(**image_processor_kwargs), tokenizer=tokenizer
        )

    # -- prompts ------------------------------------------------------------------------------------

    @property
    def text_limit(self) -> int:
        return int(self.hf.config.text_config.max_position_embeddings)

    def encode_prompt(self, class_names: Sequence[str], labels: Sequence[int] | None = None) -> EncodedPrompt:
        return encode_query_prompt(class_names, self.tokenizer, self.text_limit, labels)

    def encode_prompts(
        self,
        class_names: Sequence[str],
        labels: Sequence[int] | None = None,
        max_classes_per_chunk: int | None = None,
    ) -> list[EncodedPrompt]:
        """One prompt holds any number of queries (each is scored on its own, so a class's scores
        do not depend on the others); ``max_classes_per_chunk`` still bounds memory."""
        if max_classes_per_chunk is None:
            return [self.encode_prompt(class_names, labels)]
        return super().encode_prompts(class_names, labels, max_classes_per_chunk)

    # -- text ---------------------------------------------------------------------------------------

    def encode_text(self, prompt: EncodedPrompt) -> Tensor:
        """Class embeddings [Q, D]: ``get_text_features`` (text model, pooled at the end token,
        ``text_projection``), before the normalisation ``Owlv2Model.forward`` applies."""
        owlv2: Any = self.hf.owlv2
        out = owlv2.get_text_features(
            input_ids=prompt.input_ids.to(self.device), attention_mask=prompt.attention_mask.to(self.device)
        )
        return out.pooler_output

    def offset_shape(self, prompt: EncodedPrompt | None) -> tuple[int, int]:
        if prompt is None:
            raise ValueError("OWLv2's prompt offset has one row per class: enable it with the task's prompt")
        return len(prompt.labels), int(self.hf.config.projection_dim)

    def drop_text_encoder(self) -> None:
        owlv2: Any = self.hf.owlv2
        owlv2.text_model = None
        self.text_encoder_dropped = True

    # -- forward ------------------------------------------------------------------------------------

    def box_scale(self, sizes: Sequence[tuple[int, int]]) -> Tensor:
        # The processor pads every image to a square: boxes are relative to its longer side.
        return torch.tensor([[max(h, w)] * 4 for h, w in sizes], dtype=torch.float32)

    def run(
        self,
        batch: ImageBatch,
        prompt: EncodedPrompt,
        text: Tensor,
        labels: list[dict[str, Tensor]] | None = None,
    ) -> RawOutputs:
        hf: Any = self.hf
        feature_map = hf.image_embedder(pixel_values=batch.pixel_values)[0]  # [B, h, w, C]
        n, height, width, channels = feature_map.shape
        image_feats = feature_map.reshape(n, height * width, channels)
        # Owlv2Model.forward normalises the class embeddings; the class head normalises again.
        queries = text / torch.linalg.norm(text, ord=2, dim=-1, keepdim=True)
        queries = queries[None].expand(n, -1, -1)
        query_mask = (prompt.input_ids[..., 0] > 0)[None].expand(n, -1).to(self.device)  # transformers' rule
        logits, _ = hf.class_predictor(image_feats, queries, query_mask)
        boxes = hf.box_predictor(image_feats, feature_map)
        if labels is None:
            return RawOutputs(logits, boxes)
        config = SimpleNamespace(num_labels=logits.shape[-1], auxiliary_loss=False, **self.loss_weights)
        loss, losses, _ = DeformableDetrForObjectDetectionLoss(logits, labels, logits.device, boxes, config)
        return RawOutputs(logits, boxes, loss, dict(losses))
