"""Ranked boxes per phrase from GLIP's head outputs: exact on hand-made logits, the detection path's
boxes on the oracle's head outputs, and sane on a randomly initialised glip_mini with two captions."""

from __future__ import annotations

import math

import pytest
import torch

from adapt.data.flickr import flickr_samples
from adapt.data.grounding import encode_grounding
from adapt.model import batch_images, build_glip
from adapt.model.box_coder import BoxCoder
from adapt.model.grounding import ground_phrases, rank_phrases
from adapt.model.postprocess import PostProcessor
from adapt.prompt import load_tokenizer
from tests.model.test_forward_oracle import FIXTURE, mini_config

NEG = -20.0  # sigmoid ~ 2e-9: never above the threshold


def hand_made(batch: int = 1) -> tuple:
    """One FPN level of 1 x 4 locations, 8 tokens, zero box deltas, centerness 0.5.

    Phrase 1 = tokens 1, 2: location 0 logits (2, 2) -> mean probability sigmoid(2); locations 1
    and 2 logits (0, 0) -> 0.5, an exact tie. Phrase 2 = token 4: location 3 logit 3 only.
    """
    anchors = torch.tensor([[0.0, 0, 9, 9], [20, 0, 29, 9], [40, 0, 49, 9], [60, 0, 69, 9]])
    logits = torch.full((batch, 4, 8), NEG)
    logits[:, 0, 1:3] = 2.0
    logits[:, 1, 1:3] = 0.0
    logits[:, 2, 1:3] = 0.0
    logits[:, 3, 4] = 3.0
    bbox_reg = [torch.zeros(batch, 4, 1, 4)]
    centerness = [torch.zeros(batch, 1, 1, 4)]
    return bbox_reg, centerness, [logits], [anchors], [(10, 70)] * batch


def test_hand_made_logits_exact_scores_order_and_ties():
    bbox_reg, centerness, logits, anchors, sizes = hand_made()
    (ranked,) = ground_phrases(
        bbox_reg, centerness, logits, anchors, sizes, [[[1, 2], [4], []]], PostProcessor()
    )
    boxes = BoxCoder().decode(torch.zeros(4, 4), anchors[0])  # zero deltas give the anchors back
    first, second, no_tokens = ranked
    # score = sqrt(mean token probability x sigmoid(centerness)), as for detection
    expected = torch.tensor([math.sqrt(torch.sigmoid(torch.tensor(2.0)).item() * 0.5), 0.5, 0.5])
    assert torch.allclose(first.scores, expected, atol=1e-6)
    # the tie at 0.5 goes to the larger box coordinates: location 2 before location 1
    assert torch.allclose(first.boxes, boxes[[0, 2, 1]])
    assert torch.allclose(second.boxes, boxes[[3]])
    assert second.scores.item() == pytest.approx(math.sqrt(torch.sigmoid(torch.tensor(3.0)).item() * 0.5))
    assert no_tokens.boxes.shape == (0, 4) and no_tokens.scores.shape == (0,)


def test_each_image_uses_its_own_caption_and_the_cap():
    bbox_reg, centerness, logits, anchors, sizes = hand_made(batch=2)
    out = ground_phrases(
        bbox_reg, centerness, logits, anchors, sizes, [[[1, 2]], [[4], [1, 2]]], PostProcessor(), max_boxes=2
    )
    assert [len(r.boxes) for r in out[0]] == [2]
    assert [len(r.boxes) for r in out[1]] == [1, 2]
    assert torch.equal(out[1][0].boxes, out[0][0].boxes.new_tensor([[60.0, 0, 69, 9]]))


def test_phrases_below_the_threshold_get_empty_lists():
    bbox_reg, centerness, logits, anchors, sizes = hand_made()
    (ranked,) = ground_phrases(bbox_reg, centerness, logits, anchors, sizes, [[[5], [6, 7]]], PostProcessor())
    assert [len(r.boxes) for r in ranked] == [0, 0]
    with pytest.raises(ValueError, match="phrase tokens for 2 images, head outputs for 1"):
        ground_phrases(bbox_reg, centerness, logits, anchors, sizes, [[[1]], [[1]]], PostProcessor())


def test_same_boxes_as_the_detection_path_on_the_oracle():
    oracle = torch.load(FIXTURE / "mini_io.pt", weights_only=True)
    src, inputs = oracle["eval"], oracle["inputs"]
    label_to_tokens = inputs["positive_map_label_to_token"]  # {1: [1], 2: [3, 4], 3: [6]}
    phrases = [label_to_tokens[k] for k in sorted(label_to_tokens)]
    ranked = ground_phrases(
        src["head.bbox_reg"],
        src["head.centerness"],
        src["head.dot_product_logits"],
        src["anchors"],
        inputs["image_sizes_hw"],
        [phrases, phrases],
        PostProcessor(),
    )
    for per_phrase, ref in zip(ranked, src["detections"], strict=True):
        for label, mine in enumerate(per_phrase, start=1):
            theirs = ref["boxes_xyxy"][ref["labels"] == label]
            assert len(mine.boxes) == len(theirs)
            order = ref["scores"][ref["labels"] == label].argsort(descending=True, stable=True)
            assert torch.allclose(mine.scores, ref["scores"][ref["labels"] == label][order], atol=1e-5)
            assert (mine.scores[:-1] >= mine.scores[1:]).all()
            # same set of boxes (ties may order differently from a plain sort)
            d = torch.cdist(mine.boxes, theirs, p=float("inf"))
            assert (d.amin(1) <= 1e-3).all() and (d.amin(0) <= 1e-3).all()


def test_rank_phrases_groups_by_label():
    detections = {
        "boxes": torch.tensor([[0.0, 0, 1, 1], [5, 5, 9, 9], [2, 2, 3, 3]]),
        "scores": torch.tensor([0.2, 0.9, 0.4]),
        "labels": torch.tensor([2, 2, 1]),
    }
    first, second, third = rank_phrases(detections, 3)
    assert first.scores.tolist() == pytest.approx([0.4])
    assert second.boxes.tolist() == [[5, 5, 9, 9], [0, 0, 1, 1]]
    assert len(third.boxes) == 0


@pytest.fixture(scope="module")
def mini_outputs(tmp_path_factory):
    """glip_mini (random init) on two small images, each with its own Flickr caption."""
    from tests.grounding.conftest import write_flickr

    root = write_flickr(tmp_path_factory.mktemp("flickr"))
    samples = [
        s for s in flickr_samples(root, "test") if (s.image_id, s.sentence_id) in {("1001", 1), ("1002", 0)}
    ]
    tokenizer = load_tokenizer()
    encoded = [encode_grounding(s, tokenizer) for s in samples]
    model = build_glip(mini_config()).eval()
    g = torch.Generator().manual_seed(0)
    batch, sizes = batch_images(
        [torch.rand(3, 48, 64, generator=g), torch.rand(3, 64, 40, generator=g)], model.cfg.input
    )
    with torch.no_grad():
        text = model.encode_text(
            torch.stack([e.input_ids for e in encoded]), torch.stack([e.attention_mask for e in encoded])
        )
        features = model.backbone(batch)
        out = model.head(features, text)
    anchors = model.anchor_generator([tuple(f.shape[-2:]) for f in features])
    return out, anchors, sizes, [e.phrase_tokens for e in encoded]


def test_glip_mini_shapes_and_ordering(mini_outputs):
    out, anchors, sizes, phrase_tokens = mini_outputs
    # an untrained head scores every token near its prior (0.01): a zero threshold keeps candidates
    postprocessor = PostProcessor(score_threshold=0.0, detections_per_image=50)
    ranked = ground_phrases(
        out.bbox_reg,
        out.centerness,
        out.dot_product_logits,
        anchors,
        sizes,
        phrase_tokens,
        postprocessor,
        max_boxes=10,
    )
    assert [len(r) for r in ranked] == [3, 1]  # "a man", "a dog", "a man" / "A child"
    for per_phrase, (h, w) in zip(ranked, sizes, strict=True):
        assert sum(len(r.boxes) for r in per_phrase) <= 50
        for r in per_phrase:
            assert 0 < len(r.boxes) <= 10 and r.boxes.shape[1] == 4 and r.scores.shape == (len(r.boxes),)
            assert (r.scores[:-1] >= r.scores[1:]).all()
            assert (r.boxes[:, 0::2] >= 0).all() and (r.boxes[:, 0::2] <= w - 1).all()
            assert (r.boxes[:, 1::2] >= 0).all() and (r.boxes[:, 1::2] <= h - 1).all()
    # the two mentions of "a man" have different tokens, hence (generally) different scores
    assert not torch.equal(ranked[0][0].scores, ranked[0][2].scores)
