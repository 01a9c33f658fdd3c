"""The deployed detector as a module: normalised images in, per-level box deltas and class scores out.

What goes into the ONNX graph is GLIP's image side for one fixed text: Swin + FPN + the fusion
tower + the prediction layers, with the text features (BERT output, plus the prompt offset or the
exported prompt embeddings) held as constants, so no text encoder is in the graph. Two facts make
the fixed text cheaper than adapt's eager model, without changing a detection:

* the text is cut after its last real token. Every step of the head treats tokens independently
  (LayerNorm, the BERT layers' feed-forward, the text->image softmax over image locations) or
  masks the pads with an exact zero probability (the BERT layers' additive mask, the fusion's
  image->text mask), so real tokens get the same features from a 20-token text as from the
  256-token padded one; only pad tokens, which no class reads, are dropped;
* the token -> class pooling (official ``SCORE_AGG`` "MEAN": the mean of a class's token
  probabilities) happens in the graph, so the output has one column per class, not per token.

Post-processing (thresholds, top-k, decoding, NMS) stays outside: its order-dependent steps are
exactly reproducible in numpy (``adapt.deploy.postprocess``), not with ONNX's ``NonMaxSuppression``.
Outputs per FPN level l, named in :data:`OUTPUTS`: ``deltas_l`` [B, H_l, W_l, 4] (after the level's
scale), ``centerness_l`` [B, H_l, W_l] (sigmoid) and ``scores_l`` [B, H_l, W_l, C] (column j =
label j + 1; labels absent from the caption score 0).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from unittest import mock

import torch
from torch import Tensor, nn

import adapt.model.fusion
from adapt.model.glip import GLIP
from adapt.model.language import TextFeatures

OUTPUTS = ("deltas", "centerness", "scores")


def output_names(levels: int) -> list[str]:
    """Graph output names, output kind outer and level inner: deltas_0..4, centerness_0..4, scores_0..4."""
    return [f"{kind}_{level}" for kind in OUTPUTS for level in range(levels)]


def used_tokens(mask: Tensor) -> int:
    """Positions up to the last real token ([CLS] .. [SEP]); what the deployed text keeps."""
    real = torch.nonzero(mask.reshape(-1) != 0)
    if real.numel() == 0:
        raise ValueError("the text has no real token")
    return int(real.max()) + 1


def pooling(label_to_tokens: Mapping[int, Sequence[int]]) -> tuple[Tensor, Tensor, Tensor]:
    """Token -> class pooling as padded gather indices [C, K], 0/1 weights [C, K] and token counts [C].

    Column j is label j + 1 (C = the largest label), as ``adapt.model.postprocess.class_scores``
    lays them out; a label without tokens gets weight 0 and count 1, so its score is an exact 0.
    """
    classes = max((int(k) for k in label_to_tokens), default=0)
    width = max((len(v) for v in label_to_tokens.values()), default=1)
    index = torch.zeros(classes, width, dtype=torch.long)
    weight = torch.zeros(classes, width)
    count = torch.ones(classes)
    for label, tokens in label_to_tokens.items():
        index[int(label) - 1, : len(tokens)] = torch.tensor([int(t) for t in tokens])
        weight[int(label) - 1, : len(tokens)] = 1.0
        count[int(label) - 1] = float(len(tokens))
    return index, weight, count


class DeployedGLIP(nn.Module):
    """GLIP's image side with a constant text; ``forward(images [B, 3, H, W])`` -> the outputs above."""

    text_hidden: Tensor
    text_embedded: Tensor
    text_mask: Tensor
    pool_index: Tensor
    pool_weight: Tensor
    pool_count: Tensor

    def __init__(self, model: GLIP, text: TextFeatures, label_to_tokens: Mapping[int, Sequence[int]]) -> None:
        super().__init__()
        self.cfg = model.cfg
        self.backbone = model.backbone
        self.head = model.head.eval()
        keep = used_tokens(text.mask)
        if any(max(v) >= keep for v in label_to_tokens.values() if v):
            raise ValueError(f"label_to_tokens reaches past the caption's {keep} real tokens")
        assert text.embedded is not None
        # [1, t, D] constants; the batch dimension is expanded in forward.
        self.register_buffer("text_hidden", text.hidden[:1, :keep].detach().clone())
        self.register_buffer("text_embedded", text.embedded[:1, :keep].detach().clone())
        self.register_buffer("text_mask", text.mask[:1, :keep].detach().clone())
        index, weight, count = pooling(label_to_tokens)
        self.register_buffer("pool_index", index)
        self.register_buffer("pool_weight", weight)
        self.register_buffer("pool_count", count)

    @property
    def num_classes(self) -> int:
        return int(self.pool_index.shape[0])

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        batch = images.shape[0]
        text = TextFeatures(
            hidden=self.text_hidden.expand(batch, -1, -1),
            mask=self.text_mask.expand(batch, -1),
            embedded=self.text_embedded.expand(batch, -1, -1),
        )
        outputs = self.head(self.backbone(images), text)
        deltas, centerness, scores = [], [], []
        for bbox_reg, ctr, logits in zip(
            outputs.bbox_reg, outputs.centerness, outputs.dot_product_logits, strict=True
        ):
            height, width = bbox_reg.shape[-2:]
            deltas.append(bbox_reg.permute(0, 2, 3, 1))
            centerness.append(ctr[:, 0].sigmoid())
            probs = logits.sigmoid()[..., self.pool_index]  # [B, HW, C, K]
            pooled = (probs * self.pool_weight).sum(-1) / self.pool_count
            scores.append(pooled.reshape(batch, height, width, -1))
        return (*deltas, *centerness, *scores)


@contextmanager
def fixed_text_columns() -> Iterator[None]:
    """The fusion asks how many token columns are real (a data-dependent count, which a graph
    cannot hold); the deployed text is already cut after its last real token, so the answer is
    all of them, for the block."""
    with mock.patch.object(adapt.model.fusion, "_used_tokens", lambda mask: mask.shape[1]):
        yield
