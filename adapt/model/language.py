"""BERT language backbone (transformers ``BertModel``, no pooler) and the text features it yields.

GLIP runs BERT on the full max-length (256) token sequence and keeps the last layer unmasked
(``hidden``, the input of the fusion) plus a pad-zeroed copy (``embedded``, what GLIP-T (A) dots
with the image without fusion). ``TextFeatures`` can be computed once per prompt and reused: prompt
tuning runs BERT once and only adds the learned offset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AttentionInterface, BertConfig, BertModel
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from adapt.model.config import LanguageConfig

# Attention implementations registered with transformers under these names (selected through the
# BERT config's `attn_implementation`).
BERT_ATTENTION = "glip_bert"
BERT_ATTENTION_CLAMPED = "glip_bert_clamped"
ATTENTION_CLAMP = 50000.0


def _bert_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    *,
    clamp: bool,
    **kwargs: object,  # transformers passes scaling/dropout hints; the module's own are used
) -> tuple[Tensor, Tensor]:
    """Classic BERT attention, softmax(QK^T / sqrt(d) + mask), as the official models compute it.

    Dropout goes through the attention module's own ``nn.Dropout``, so switching a model's dropout
    modules off (eval, or ``.training = False``) reaches it like every other dropout.
    """
    scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(query.shape[-1])
    if clamp:
        # Official quirk in the head's BERT layers (CLAMP_BERTATTN_MIN/MAX_FOR_UNDER/OVERFLOW):
        # scores are clamped to [-50000, 50000] *before* the additive mask.
        scores = scores.clamp(-ATTENTION_CLAMP, ATTENTION_CLAMP)
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = scores.softmax(dim=-1)
    dropout = getattr(module, "dropout", None)
    if isinstance(dropout, nn.Dropout):
        probs = dropout(probs)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


# `glip_bert` for the language backbone; `glip_bert_clamped` for the BERT layers inside the head.
AttentionInterface.register(BERT_ATTENTION, partial(_bert_attention, clamp=False))
AttentionInterface.register(BERT_ATTENTION_CLAMPED, partial(_bert_attention, clamp=True))
AttentionMaskInterface.register(BERT_ATTENTION, eager_mask)
AttentionMaskInterface.register(BERT_ATTENTION_CLAMPED, eager_mask)


def additive_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """[B, L] 0/1 -> [B, 1, 1, L] additive mask (0 keep, dtype minimum on pads), HF's extended mask."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


@dataclass
class TextFeatures:
    """Language stream entering the head.

    hidden:   [B, L, D] last BERT layer, pads *not* zeroed (they carry values; masked downstream).
    mask:     [B, L] tokenizer attention mask (1 on [CLS]..[SEP], 0 on [PAD]).
    embedded: [B, L, D] ``hidden * mask`` unless given (the official ``embedded``; the prompt
              offset is added to it *after* masking, so it can differ from ``hidden * mask``).
    """

    hidden: Tensor
    mask: Tensor
    embedded: Tensor | None = None

    def __post_init__(self) -> None:
        if self.embedded is None:
            self.embedded = self.hidden * self.mask[..., None].to(self.hidden.dtype)

    def with_offset(self, offset: Tensor) -> TextFeatures:
        """Official prompt tuning (``tunable_linear``): ``embedded += W[:L]`` and ``hidden += W[:L]``.

        The offset is per token *position* (broadcast over the batch); at pad positions it has no
        effect downstream (pads are masked in fusion, BERT layers, scores and loss).
        """
        length = self.hidden.shape[1]
        if offset.shape[0] < length:
            raise ValueError(f"prompt offset has {offset.shape[0]} rows, the text has {length} tokens")
        rows = offset[:length].to(self.hidden.dtype)
        assert self.embedded is not None
        return TextFeatures(hidden=self.hidden + rows, mask=self.mask, embedded=self.embedded + rows)


def bert_config(cfg: LanguageConfig, **overrides: Any) -> BertConfig:
    """bert-base-uncased architecture at the sizes of ``cfg`` (dropout 0.1, LayerNorm eps 1e-12)."""
    kwargs: dict[str, Any] = dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings,
        hidden_act="gelu",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        type_vocab_size=2,
        layer_norm_eps=1e-12,
        pad_token_id=0,
        initializer_range=0.02,
    )
    kwargs.update(overrides)
    return BertConfig(**kwargs)


def build_language_backbone(cfg: LanguageConfig) -> BertModel:
    """``language_backbone``: a randomly initialised ``BertModel`` without pooler.

    Attention is the classic softmax(QK^T / sqrt(d) + mask) of the official model (the form the
    oracle fixture was computed with), registered as ``glip_bert``.
    """
    return BertModel(bert_config(cfg, attn_implementation=BERT_ATTENTION), add_pooling_layer=False)


def encode_text(
    bert: BertModel, input_ids: Tensor, attention_mask: Tensor, inputs_embeds: Tensor | None = None
) -> TextFeatures:
    """Token ids [B, L] -> ``TextFeatures`` (official ``BertEncoder`` with N_LAYERS = 1).

    token_type_ids are all zero, as in the official call. The mean of the last 1 layer is the last
    layer itself, so no averaging is done. ``inputs_embeds`` [B, L, D] replaces the word embeddings
    of ``input_ids`` (learned context vectors, ``adapt.model.context_prompt``); BERT adds the
    position and token-type embeddings to them as it does to looked-up ones.
    """
    if inputs_embeds is not None:
        hidden = bert(inputs_embeds=inputs_embeds, attention_mask=attention_mask).last_hidden_state
        return TextFeatures(hidden=hidden, mask=attention_mask)
    hidden = bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return TextFeatures(hidden=hidden, mask=attention_mask)
