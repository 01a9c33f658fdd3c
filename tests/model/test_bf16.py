"""bf16 autocast on CPU: evaluation and a prompt-tuning step run, stay finite and stay close to fp32.

The mini oracle model (random weights, official layout) on the first fixture image (256 x 320 for
evaluation, its top-left 128 x 192 with one box for the training step). bf16 keeps 8
bits of mantissa, so the outputs move by about 1% of their scale; the tolerances below are a few
times the differences observed on this machine (torch 2.14 CPU, noted next to each) and far below
what a dtype bug (an fp32/bf16 mismatch, an unclamped overflow, boxes decoded in bf16) produces.
The deformable convolutions run in fp32 inside autocast, as officially.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import box_iou

from adapt.model import GLIP
from tests.model.test_forward_oracle import switch_off_randomness, train_targets

# Observed on two machines (torch 2.14 CPU): an AMD EPYC without a bf16 unit, and the machine of
# the first measurement; each bound is about three times the larger observation.
LOGIT_ATOL = 0.03  # observed 0.0095 / 0.010 (|logits| <= 1.3)
BBOX_REG_ATOL = 0.012  # observed 0.0033 / 0.0038 (|bbox_reg| <= 0.18)
MIN_TOP100_OVERLAP = 90  # observed 99 / 97 of 100; the random model's scores lie within 0.39..0.42
LOSS_RTOL = 1e-3  # observed 5.9e-5 / 2.6e-4 (loss_dot_product_token)
MIN_GRAD_COSINE = 0.9995  # observed 0.999902 / 0.99990 (prompt-offset gradient; 1 - cos x 5)


def autocast(enabled: bool) -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


def evaluate(model: GLIP, inputs: dict, bf16: bool) -> tuple[dict, object]:
    caught = {}
    hook = model.head.register_forward_hook(lambda mod, args, out: caught.update(head=out))
    try:
        with torch.inference_mode(), autocast(bf16):
            detections = model(
                inputs["batched_images"][:1],
                inputs["image_sizes_hw"][:1],
                input_ids=inputs["input_ids"][:1],
                attention_mask=inputs["attention_mask"][:1],
                label_to_tokens=inputs["positive_map_label_to_token"],
            )
    finally:
        hook.remove()
    return detections[0], caught["head"]


def test_bf16_evaluation_close_to_fp32(model: GLIP, oracle: dict):
    ref, ref_head = evaluate(model, oracle["inputs"], bf16=False)
    det, head = evaluate(model, oracle["inputs"], bf16=True)
    for ours, theirs in zip(head.dot_product_logits, ref_head.dot_product_logits, strict=True):
        assert ours.dtype == torch.float32 and torch.isfinite(ours).all()
        assert (ours - theirs).abs().max() <= LOGIT_ATOL
    for ours, theirs in zip(head.bbox_reg, ref_head.bbox_reg, strict=True):
        assert (ours - theirs).abs().max() <= BBOX_REG_ATOL
    # Detections: fp32 boxes (decoded from fp32 deltas), finite, inside the image; the top 100
    # mostly the same boxes (same label, IoU > 0.5).
    assert det["boxes"].dtype == torch.float32 and torch.isfinite(det["boxes"]).all()
    assert torch.isfinite(det["scores"]).all() and len(det["scores"]) == len(ref["scores"])
    h, w = oracle["inputs"]["image_sizes_hw"][0]
    assert (det["boxes"][:, 2] <= w - 1).all() and (det["boxes"][:, 3] <= h - 1).all()
    iou = box_iou(ref["boxes"], det["boxes"])
    iou[ref["labels"][:, None] != det["labels"][None, :]] = 0
    assert int((iou.max(dim=1).values > 0.5).sum()) >= MIN_TOP100_OVERLAP


def prompt_step(model: GLIP, oracle: dict, bf16: bool) -> tuple[dict, torch.Tensor]:
    """One prompt-tuning step (forward, backward through the frozen head, SGD update)."""
    tokens = oracle["train"]["intermediates"]["tokenizer_input"]
    model.requires_grad_(False)
    offset = model.enable_prompt_tuning()
    with torch.no_grad():
        offset.zero_()
    model.train()
    switch_off_randomness(model)
    optimizer = torch.optim.SGD([offset], lr=0.1)
    positive_map = train_targets(oracle)[0]["positive_map"]
    try:
        # The top-left 128 x 192 of the first image (a quarter of the work), one box.
        target = {"boxes": torch.tensor([[8.0, 12.0, 90.0, 100.0]]), "positive_map": positive_map[:1]}
        with autocast(bf16):
            losses = model(
                oracle["inputs"]["batched_images"][:1, :, :128, :192],
                [(128, 192)],
                input_ids=tokens["input_ids"][:1],
                attention_mask=tokens["attention_mask"][:1],
                targets=[target],
            )
        losses["total"].backward()
        grad = offset.grad.detach().clone()
        optimizer.step()
        assert torch.isfinite(offset).all()
    finally:
        model.eval()
        model.prompt_offset = None
    return {k: v.detach() for k, v in losses.items()}, grad


def test_bf16_prompt_tuning_step_close_to_fp32(model: GLIP, oracle: dict):
    ref_losses, ref_grad = prompt_step(model, oracle, bf16=False)
    losses, grad = prompt_step(model, oracle, bf16=True)
    for name in ("loss_reg", "loss_centerness", "loss_dot_product_token", "total"):
        assert torch.isfinite(losses[name])
        torch.testing.assert_close(losses[name].float(), ref_losses[name], rtol=LOSS_RTOL, atol=0, msg=name)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    cosine = nn.functional.cosine_similarity(grad.flatten(), ref_grad.flatten(), dim=0)
    assert cosine >= MIN_GRAD_COSINE
