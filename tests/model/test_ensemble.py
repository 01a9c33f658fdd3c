"""Prompt ensembling at the class-score level: one member is the plain model, the image backbone runs
once whatever the number of prompts, and the combination is the per-anchor mean."""

from __future__ import annotations

import pytest
import torch

from adapt.model import GLIP
from adapt.model.postprocess import class_scores
from adapt.prompt import CaptionPrompt, encode_prompt, load_tokenizer

CLASSES = ["fish", "jellyfish", "penguin"]


def _images() -> tuple[torch.Tensor, list[tuple[int, int]]]:
    torch.manual_seed(0)
    return torch.randn(1, 3, 64, 96), [(64, 90)]


def _text(model: GLIP, prompt, batch: int = 1):
    ids, mask = prompt.input_ids[None].expand(batch, -1), prompt.attention_mask[None].expand(batch, -1)
    return model.encode_text(ids, mask)


def _same(a: list[dict], b: list[dict]) -> bool:
    return all(torch.equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in x)


def test_one_member_and_identical_members_are_the_plain_detections(model: GLIP):
    prompt = encode_prompt(CLASSES, load_tokenizer())
    images, sizes = _images()
    with torch.no_grad():
        text = _text(model, prompt)
        plain = model(images, sizes, text=text, label_to_tokens=prompt.label_to_tokens)
        for members in (1, 2):  # the mean of two equal numbers is exact (of three, not always)
            got = model(
                images, sizes, text=[text] * members, label_to_tokens=[prompt.label_to_tokens] * members
            )
            assert _same(got, plain), members
    assert sum(len(d["scores"]) for d in plain) > 0


def test_the_backbone_runs_once_and_the_head_once_per_prompt(model: GLIP):
    tok = load_tokenizer()
    prompts = [
        encode_prompt(CLASSES, tok),
        encode_prompt(CLASSES, tok, [CaptionPrompt(prefix="a photo of a ")] * 3),
        encode_prompt(CLASSES, tok, [CaptionPrompt(prefix="the small ")] * 3),
    ]
    images, sizes = _images()
    calls = {"backbone": 0, "head": 0}
    hooks = [
        model.backbone.register_forward_hook(lambda *_: calls.__setitem__("backbone", calls["backbone"] + 1)),
        model.head.register_forward_hook(lambda *_: calls.__setitem__("head", calls["head"] + 1)),
    ]
    try:
        with torch.no_grad():
            texts = [_text(model, p) for p in prompts]
            model(images, sizes, text=texts, label_to_tokens=[p.label_to_tokens for p in prompts])
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == {"backbone": 1, "head": 3}


def test_class_scores_are_the_mean_of_the_members_scores(model: GLIP):
    """With every candidate kept (threshold 0, no top-k cut, no suppression), the ensemble's scores
    are sqrt(mean class score x mean centerness) over the members, per anchor and class."""
    tok = load_tokenizer()
    prompts = [encode_prompt(CLASSES, tok), encode_prompt(CLASSES, tok, [CaptionPrompt(prefix="a ")] * 3)]
    images, sizes = _images()
    pp = model.postprocessor
    keep = (pp.score_threshold, pp.pre_nms_top_n, pp.nms_threshold, pp.detections_per_image)
    pp.score_threshold, pp.pre_nms_top_n, pp.nms_threshold, pp.detections_per_image = 0.0, 10**6, 1.0, 10**6
    try:
        with torch.no_grad():
            texts = [_text(model, p) for p in prompts]
            got = model(images, sizes, text=texts, label_to_tokens=[p.label_to_tokens for p in prompts])
            outs = [model.head(model.backbone(images), t) for t in texts]
    finally:
        pp.score_threshold, pp.pre_nms_top_n, pp.nms_threshold, pp.detections_per_image = keep
    want = []
    for level in range(len(outs[0].centerness)):
        scores = torch.stack(
            [
                class_scores(o.dot_product_logits[level].sigmoid(), p.label_to_tokens, 3)
                for o, p in zip(outs, prompts, strict=True)
            ]
        ).mean(0)
        ctr = torch.stack([o.centerness[level].reshape(1, -1).sigmoid() for o in outs]).mean(0)
        want.append((scores * ctr[..., None]).sqrt().reshape(1, -1))
    want = torch.cat(want, dim=1)
    assert len(got[0]["scores"]) == want.shape[1]
    torch.testing.assert_close(got[0]["scores"].sort().values, want[0].sort().values)


def test_an_ensemble_detects_only_and_needs_a_map_per_prompt(model: GLIP):
    prompt = encode_prompt(CLASSES, load_tokenizer())
    other = encode_prompt(CLASSES[:2], load_tokenizer())
    images, sizes = _images()
    with torch.no_grad():
        text = _text(model, prompt)
        with pytest.raises(ValueError, match="one label_to_tokens per prompt"):
            model(images, sizes, text=[text], label_to_tokens=prompt.label_to_tokens)
        with pytest.raises(ValueError, match="must ground the same labels"):
            model(
                images,
                sizes,
                text=[text, text],
                label_to_tokens=[prompt.label_to_tokens, other.label_to_tokens],
            )
