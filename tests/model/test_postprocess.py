"""Post-processing reproduces the official detections from the oracle's stored head outputs.

Tolerance (fixture README): boxes 1e-3 px and scores 1e-5 after matching by label and box.
Observed: every detection of both images, for the plain and the prompt-tuned pass, is bit-identical
to the stored one (box and score difference 0), and even the raw output order agrees with this
torch version's ``topk(sorted=False)`` (not asserted: that order is implementation-defined).
"""

from __future__ import annotations

import pytest
import torch

from adapt.model.postprocess import PostProcessor, class_scores, class_wise_nms

BOX_TOL = 1e-3
SCORE_TOL = 1e-5


def match(ours: dict, ref: dict) -> tuple[int, float, float]:
    """Greedy one-to-one matching by label and box; returns (#unmatched, max box diff, max score diff)."""
    used = torch.zeros(len(ours["scores"]), dtype=torch.bool)
    unmatched, box_diff, score_diff = 0, 0.0, 0.0
    for box, score, label in zip(ref["boxes_xyxy"], ref["scores"], ref["labels"], strict=True):
        d = (ours["boxes"] - box).abs().amax(1)
        d[(ours["labels"] != label) | used] = float("inf")
        j = int(d.argmin()) if len(d) else -1
        if j < 0 or d[j] > BOX_TOL:
            unmatched += 1
            continue
        used[j] = True
        box_diff = max(box_diff, d[j].item())
        score_diff = max(score_diff, (ours["scores"][j] - score).abs().item())
    return unmatched + int((~used).sum()), box_diff, score_diff


@pytest.mark.parametrize("section", ["eval", "prompt_tuning"])
def test_detections_match_oracle(oracle, section):
    src = oracle["eval"] if section == "eval" else oracle["prompt_tuning"]["eval"]
    out = PostProcessor()(
        src["head.bbox_reg"],
        src["head.centerness"],
        src["head.dot_product_logits"],  # first 16 tokens; the label tokens are 1, 3, 4, 6
        oracle["eval"]["anchors"],
        oracle["inputs"]["image_sizes_hw"],
        oracle["inputs"]["positive_map_label_to_token"],
    )
    assert len(out) == 2
    for ours, ref in zip(out, src["detections"], strict=True):
        assert ours["boxes"].shape == (100, 4) and ours["labels"].dtype == torch.int64
        unmatched, box_diff, score_diff = match(ours, ref)
        assert unmatched == 0
        assert box_diff <= BOX_TOL and score_diff <= SCORE_TOL
        # Same multiset sorted by score.
        assert torch.allclose(
            ours["scores"].sort(descending=True).values, ref["sorted_by_score"]["scores"], atol=SCORE_TOL
        )


def test_nms_uses_plus_one_iou_and_strict_threshold():
    scores = torch.tensor([0.9, 0.8])
    labels = torch.tensor([1, 1])
    # +1 IoU = 20 / 30 = 0.667 > 0.6 (suppressed); without +1 it would be 12 / 20 = 0.6 (kept).
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [1.0, 0.0, 5.0, 4.0]])
    assert class_wise_nms(boxes, scores, labels, 0.6).tolist() == [0]
    # +1 IoU exactly 0.6 (75 / 125): kept, suppression needs IoU > threshold.
    boxes = torch.tensor([[0.0, 0.0, 9.0, 9.0], [2.5, 0.0, 11.5, 9.0]])
    assert class_wise_nms(boxes, scores, labels, 0.6).tolist() == [0, 1]
    # Different labels never suppress each other.
    boxes = torch.tensor([[0.0, 0.0, 9.0, 9.0], [0.0, 0.0, 9.0, 9.0]])
    assert class_wise_nms(boxes, scores, torch.tensor([1, 2]), 0.6).tolist() == [0, 1]


def test_nms_keeps_original_order_and_stable_ties():
    boxes = torch.tensor([[0.0, 0, 9, 9], [50, 50, 59, 59], [0, 0, 9, 9], [100, 100, 109, 109]])
    scores = torch.tensor([0.5, 0.9, 0.5, 0.7])
    keep = class_wise_nms(boxes, scores, torch.ones(4, dtype=torch.int64), 0.6)
    assert keep.tolist() == [0, 1, 3]  # by original index; of the tied duplicates the first survives


def test_top_k_keeps_ties_and_order():
    post = PostProcessor(detections_per_image=2)
    boxes = torch.tensor([[0.0, 0, 9, 9], [20, 20, 29, 29], [40, 40, 49, 49], [60, 60, 69, 69]])
    scores = torch.tensor([0.3, 0.9, 0.3, 0.1])
    out = post.select_over_all_levels(boxes, scores, torch.ones(4, dtype=torch.int64))
    assert out["scores"].tolist() == pytest.approx([0.3, 0.9, 0.3])  # tie at the cut: 3 kept, unsorted


def single_location_inputs(logit: float, ctr_logit: float):
    """One level with one location (anchor [-28, -28, 35, 35]) and 4 tokens."""
    reg = [torch.zeros(1, 4, 1, 1)]
    ctr = [torch.full((1, 1, 1, 1), ctr_logit)]
    logits = [torch.full((1, 1, 4), logit)]
    anchors = [torch.tensor([[-28.0, -28.0, 35.0, 35.0]])]
    return reg, ctr, logits, anchors


def test_threshold_before_centerness_and_sqrt_score():
    logit = torch.logit(torch.tensor(0.06)).item()
    reg, ctr, logits, anchors = single_location_inputs(logit, ctr_logit=-6.0)
    (out,) = PostProcessor()(reg, ctr, logits, anchors, [(20, 30)], {1: [1, 2]})
    # 0.06 * sigmoid(-6) < 0.05 but the threshold is applied before centerness: detected.
    assert out["labels"].tolist() == [1]
    expected = (0.06 * torch.sigmoid(torch.tensor(-6.0))).sqrt().item()
    assert out["scores"].item() == pytest.approx(expected, rel=1e-5)
    # Clipped to [0, w-1] x [0, h-1].
    assert out["boxes"].tolist() == [[0.0, 0.0, 29.0, 19.0]]
    # Below the threshold: nothing.
    reg, ctr, logits, anchors = single_location_inputs(torch.logit(torch.tensor(0.04)).item(), 6.0)
    (out,) = PostProcessor()(reg, ctr, logits, anchors, [(20, 30)], {1: [1, 2]})
    assert out["boxes"].shape == (0, 4)


def test_class_score_is_the_token_mean():
    probs = torch.tensor([[0.1, 0.2, 0.6, 0.9]])
    scores = class_scores(probs, {1: [0], 3: [2, 3]}, num_classes=3)
    assert scores[0].tolist() == pytest.approx([0.1, 0.0, 0.75])


def test_pre_nms_top_n_and_bad_tokens():
    g = torch.Generator().manual_seed(0)
    reg = [torch.zeros(1, 4, 8, 8)]
    ctr = [torch.zeros(1, 1, 8, 8)]
    logits = [torch.randn(1, 64, 4, generator=g) + 3]
    anchors = [torch.arange(64.0)[:, None] * 100 + torch.tensor([0.0, 0.0, 10.0, 10.0])]  # no overlaps
    post = PostProcessor(pre_nms_top_n=5, detections_per_image=100)
    (out,) = post(reg, ctr, logits, anchors, [(10000, 10000)], {1: [0], 2: [1, 2]})
    assert len(out["scores"]) == 5  # one level: at most pre_nms_top_n candidates
    with pytest.raises(ValueError, match="token positions"):
        post(reg, ctr, logits, anchors, [(100, 100)], {1: [7]})
