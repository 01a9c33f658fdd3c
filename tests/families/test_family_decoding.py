"""Decoding, chunking and the text-feature pieces on hand-made tensors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adapt.families.captions import chunk_classes, tokens_in_span
from adapt.families.decoding import decode, merge
from adapt.families.spec import InferenceSettings
from adapt.families.text_features import PromptOffset, StoredText, given_text
from adapt.prompt import EncodedPrompt, PromptTooLongError


def logit(p: float) -> float:
    return float(torch.logit(torch.tensor(p)))


# Two queries over 5 text positions; class 1 owns token 1, class 2 tokens 2 and 3; 0 and 4 are
# special tokens ([CLS], "."), -inf where the caption ends.
LOGITS = torch.tensor(
    [
        [
            [logit(0.9), logit(0.2), logit(0.6), logit(0.4), float("-inf")],
            [logit(0.1), logit(0.7), logit(0.3), logit(0.5), float("-inf")],
        ]
    ]
)
BOXES = torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.25, 0.25, 0.5, 0.5]]])
CLASSES = {1: [1], 2: [2, 3]}
SCALE = torch.tensor([[200.0, 100.0, 200.0, 100.0]])  # (w, h, w, h)


def test_transformers_decoding_scores_a_query_by_its_best_token():
    out = decode(LOGITS, BOXES, CLASSES, SCALE, InferenceSettings("transformers", threshold=0.5))[0]
    # Query 0's best token is [CLS] (0.9): transformers keeps it with that score; its class is the
    # class owning the best class token (token 2 -> class 2).
    assert torch.allclose(out["scores"], torch.tensor([0.9, 0.7]))
    assert out["labels"].tolist() == [2, 1]
    assert torch.allclose(out["boxes"][0], torch.tensor([80.0, 30.0, 120.0, 70.0]))


def test_topk_decoding_scores_each_class_by_its_mean_token():
    out = decode(LOGITS, BOXES, CLASSES, SCALE, InferenceSettings("topk", threshold=0.0, num_select=3))[0]
    # (query, class) scores: (0,1)=0.2, (0,2)=0.5, (1,1)=0.7, (1,2)=0.4 -> best three.
    assert torch.allclose(out["scores"], torch.tensor([0.7, 0.5, 0.4]))
    assert out["labels"].tolist() == [1, 2, 2]
    assert torch.allclose(out["boxes"][1], torch.tensor([80.0, 30.0, 120.0, 70.0]))  # query 0


def test_merge_keeps_the_best_across_chunks():
    a = {"boxes": torch.zeros(2, 4), "scores": torch.tensor([0.3, 0.9]), "labels": torch.tensor([1, 2])}
    b = {"boxes": torch.ones(1, 4), "scores": torch.tensor([0.5]), "labels": torch.tensor([7])}
    out = merge([a, b], limit=2)
    assert torch.equal(out["scores"], torch.tensor([0.9, 0.5])) and out["labels"].tolist() == [2, 7]


def test_chunks_grow_until_the_next_class_does_not_fit():
    def encode(names: list[str], labels: list[int]) -> EncodedPrompt:
        if sum(len(n) for n in names) > 10:
            raise PromptTooLongError(names, 99, 10)
        ids = torch.zeros(1, dtype=torch.long)
        return EncodedPrompt(" ".join(names), names, labels, ids, ids, {})

    chunks = chunk_classes(["aaaa", "bbbb", "cc", "dddddd", "e"], encode, labels=[5, 6, 7, 8, 9])
    assert [c.class_names for c in chunks] == [["aaaa", "bbbb", "cc"], ["dddddd", "e"]]
    assert [c.labels for c in chunks] == [[5, 6, 7], [8, 9]]
    assert len(chunk_classes(["a", "b", "c"], encode, max_classes_per_chunk=2)) == 2
    with pytest.raises(PromptTooLongError):
        chunk_classes(["a" * 11], encode)


def test_tokens_in_span_uses_character_offsets():
    offsets = [(0, 0), (0, 3), (4, 8), (8, 9), (10, 14), (0, 0)]
    assert tokens_in_span(offsets, 4, 9) == [2, 3]
    assert tokens_in_span(offsets, 0, 3) == [1]  # special tokens cover no character


def test_prompt_offset_adds_zero_exactly_and_checks_shapes():
    offset = PromptOffset(4, 3)
    x = torch.randn(2, 3, 3)
    assert torch.equal(offset(x), x)
    with torch.no_grad():
        offset.offset[1] = 1.0
    assert torch.equal(offset(x)[:, 1], x[:, 1] + 1)
    with pytest.raises(ValueError, match="5 positions but the prompt offset has 4 rows"):
        offset(torch.zeros(1, 5, 3))
    with pytest.raises(ValueError, match="2-wide"):
        offset(torch.zeros(1, 2, 2))


def test_given_text_stands_in_and_always_puts_the_encoder_back():
    owner = nn.Module()
    owner.text = nn.Linear(2, 2)
    original = owner.text
    hidden = torch.randn(1, 3, 4)
    with given_text(owner, "text", hidden):
        out = owner.text(torch.zeros(2, 3, dtype=torch.long))
        assert isinstance(owner.text, StoredText)
    assert torch.equal(out.last_hidden_state, hidden.expand(2, -1, -1))
    assert owner.text is original
    with (
        pytest.raises(ValueError, match="cover 3 tokens but the prompt has 5"),
        given_text(owner, "text", hidden),
    ):
        owner.text(torch.zeros(1, 5, dtype=torch.long))
    assert owner.text is original


def test_the_protocols_decoding_ranks_every_query_class_pair():
    from tests.families.conftest import family, image

    fam = family("grounding_dino_mini")
    assert fam.evaluation == InferenceSettings("topk", threshold=0.0, num_select=300)
    dets = fam.detect([image(0, (48, 80))], ["fish", "jellyfish", "sea lion"], settings=fam.evaluation)[0]
    assert len(dets["scores"]) == fam.hf.config.num_queries * 3  # 90 pairs, fewer than 300
    assert torch.equal(dets["scores"], dets["scores"].sort(descending=True).values)
    assert set(dets["labels"].tolist()) == {1, 2, 3}


def test_images_as_pil_or_tensors_preprocess_alike():
    import numpy as np

    from tests.families.conftest import family, image

    fam = family("owlv2_mini")
    pil = image(0, (40, 50))
    uint8 = torch.from_numpy(np.asarray(pil)).permute(2, 0, 1).contiguous()
    (a,), (b,), (c,) = fam.preprocess([pil]), fam.preprocess([uint8]), fam.preprocess([uint8 / 255.0])
    assert a.sizes == b.sizes == c.sizes == [(40, 50)]
    assert torch.equal(a.pixel_values, b.pixel_values)
    assert torch.allclose(a.pixel_values, c.pixel_values, atol=1e-5)
    with pytest.raises(TypeError, match="PIL image or a"):
        fam.preprocess([np.zeros((4, 4, 3))])
