"""From a DETR-style detector's raw outputs to detections: boxes, scores and class labels.

Both families predict, per query (a decoder slot for Grounding DINO, an image patch for OWLv2), a
normalised ``(cx, cy, w, h)`` box and one logit per text position (a token of the caption, or a class
query). A class owns some positions (``EncodedPrompt.label_to_tokens``). Two decodings:

* ``transformers``: ``post_process_grounded_object_detection`` exactly. A query's score is its best
  position's probability over the whole text (special tokens and delimiters included, as transformers
  takes it), the box is kept when that score exceeds ``threshold``, in query order. transformers names
  a Grounding DINO box by the words above ``text_threshold``; adapt needs a class, so the label is the
  class owning the most probable of the class positions. For OWLv2 every position is a class and this
  is transformers' own ``argmax`` label.
* ``topk``: the evaluation decoding of DETR-style grounding detectors (IDEA's COCO post-processor,
  mmdetection's ``GroundingDINOHead``): every (query, class) pair is scored by the mean probability
  of the class's positions, and the best ``num_select`` pairs over the image are kept (a query may
  name several classes), then those above ``threshold``. This is the ranking AP is computed on.

Boxes come back in the caller's pixels: ``scale`` is, per image, the frame the model's normalised
boxes refer to (Grounding DINO: the image's width and height; OWLv2: its longer side, since OWLv2
pads every image to a square).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from transformers.image_transforms import center_to_corners_format

from adapt.families.spec import InferenceSettings


def class_positions(label_to_tokens: Mapping[int, Sequence[int]]) -> tuple[list[int], list[list[int]]]:
    """Labels in prompt order and the text positions of each."""
    labels = list(label_to_tokens)
    return labels, [list(label_to_tokens[label]) for label in labels]


def decode(
    logits: Tensor,
    boxes: Tensor,
    label_to_tokens: Mapping[int, Sequence[int]],
    scale: Tensor,
    settings: InferenceSettings,
) -> list[dict[str, Tensor]]:
    """Detections per image: ``boxes`` [n, 4] xyxy in the caller's pixels, ``scores`` [n],
    ``labels`` [n] (the prompt's global labels).

    Args:
        logits: [B, N, T] per query and text position (masked positions at -inf).
        boxes: [B, N, 4] normalised ``(cx, cy, w, h)``.
        label_to_tokens: label -> text positions (the prompt's class map).
        scale: [B, 4] ``(sx, sy, sx, sy)``: the pixel size of each image's box frame.
    """
    probs = logits.sigmoid()
    corners: Tensor = center_to_corners_format(boxes)  # type: ignore[arg-type,assignment]
    corners = corners * scale[:, None, :].to(boxes.dtype)
    labels, positions = class_positions(label_to_tokens)
    label_ids = torch.tensor(labels, dtype=torch.long, device=logits.device)
    if settings.decoding == "transformers":
        scores = probs.max(-1).values  # [B, N]
        # The class choice compares logits: probabilities saturate to 1.0 and would tie.
        best = torch.stack([logits[..., p].max(-1).values for p in positions], -1).argmax(-1)  # [B, N]
        out: list[dict[str, Tensor]] = []
        for i in range(logits.shape[0]):
            keep = scores[i] > settings.threshold
            out.append(
                {"boxes": corners[i][keep], "scores": scores[i][keep], "labels": label_ids[best[i][keep]]}
            )
        return out
    per_class = torch.stack([probs[..., p].mean(-1) for p in positions], -1)  # [B, N, K]
    n_classes = per_class.shape[-1]
    flat = per_class.flatten(1)  # [B, N * K], query-major
    k = min(settings.num_select, flat.shape[1])
    top, index = flat.topk(k, dim=1)
    results: list[dict[str, Tensor]] = []
    for i in range(logits.shape[0]):
        keep = top[i] > settings.threshold
        query, cls = index[i][keep] // n_classes, index[i][keep] % n_classes
        results.append({"boxes": corners[i][query], "scores": top[i][keep], "labels": label_ids[cls]})
    return results


def merge(chunks: Sequence[Mapping[str, Tensor]], limit: int | None = None) -> dict[str, Tensor]:
    """One image's detections from several prompt chunks (disjoint classes): best first, at most
    ``limit`` (the ``topk`` budget applies to the image, not to each chunk)."""
    boxes = torch.cat([c["boxes"] for c in chunks])
    scores = torch.cat([c["scores"] for c in chunks])
    labels = torch.cat([c["labels"] for c in chunks])
    order = scores.argsort(descending=True, stable=True)
    if limit is not None:
        order = order[:limit]
    return {"boxes": boxes[order], "scores": scores[order], "labels": labels[order]}
