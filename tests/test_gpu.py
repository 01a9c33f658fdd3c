"""GPU checks: the oracle on CUDA, and a mixed-precision training step. Run with `pytest -m gpu`.

They need a CUDA device and are deselected by default (CI has no GPU). Tolerances on CUDA are
looser than on the CPU: cuDNN convolutions and cuBLAS matmuls reduce in other orders, and TF32 is
switched off so float32 stays float32.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from adapt.model import GLIPConfig, build_glip, load_checkpoint

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

FIXTURE = Path(__file__).parent / "fixtures" / "glip_mini_oracle"
MINI = Path(__file__).parents[1] / "adapt" / "conf" / "model" / "glip_mini.yaml"
HEAD_ATOL = 1e-4  # float32 on CUDA, TF32 off (the CPU test holds 2e-5)


@pytest.fixture(scope="module")
def oracle() -> dict:
    return torch.load(FIXTURE / "mini_io.pt", weights_only=True)


def mini_on_cuda():
    model = build_glip(GLIPConfig.from_dict(yaml.safe_load(MINI.read_text())["arch"]), seed=1)
    assert load_checkpoint(model, FIXTURE / "mini_glip.pth").ok
    return model.cuda().eval()


def test_head_outputs_on_cuda_match_the_oracle(oracle):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model, inputs = mini_on_cuda(), oracle["inputs"]
    caught = {}
    hook = model.head.register_forward_hook(lambda mod, args, out: caught.__setitem__("head", out))
    with torch.no_grad():
        model(
            inputs["batched_images"].cuda(),
            inputs["image_sizes_hw"],
            input_ids=inputs["input_ids"].cuda(),
            attention_mask=inputs["attention_mask"].cuda(),
            label_to_tokens=inputs["positive_map_label_to_token"],
        )
    hook.remove()
    head, ref = caught["head"], oracle["eval"]
    for name in ("bbox_reg", "centerness", "dot_product_logits"):
        for level in range(5):
            got = getattr(head, name)[level].cpu()
            want = ref[f"head.{name}"][level]
            torch.testing.assert_close(got[..., : want.shape[-1]], want, atol=HEAD_ATOL, rtol=0)


def test_prompt_tuning_step_under_fp16_autocast_gives_finite_loss_and_gradient(oracle):
    model = mini_on_cuda()
    offset = model.enable_prompt_tuning()
    for name, p in model.named_parameters():
        p.requires_grad_(name == "prompt_offset")
    train = oracle["train"]
    targets = [
        {"boxes": b.cuda(), "positive_map": pm.cuda()}
        for b, pm in zip(
            train["target_boxes_xyxy"],
            torch.split(train["positive_map"], [len(b) for b in train["target_boxes_xyxy"]]),
            strict=True,
        )
    ]
    ids = train["intermediates"]["tokenizer_input"]["input_ids"].cuda()
    mask = train["intermediates"]["tokenizer_input"]["attention_mask"].cuda()
    with torch.autocast("cuda", dtype=torch.float16):
        losses = model(
            oracle["inputs"]["batched_images"].cuda(),
            oracle["inputs"]["image_sizes_hw"],
            input_ids=ids,
            attention_mask=mask,
            targets=targets,
        )
    losses["total"].backward()
    assert torch.isfinite(losses["total"]).item()
    assert offset.grad is not None and torch.isfinite(offset.grad).all().item()
    rel = abs(losses["total"].item() - oracle["prompt_tuning"]["train_losses"]["total"].item())
    # The offset is zero here (not the fixture's), so only the loss scale is comparable: same order.
    assert rel < oracle["prompt_tuning"]["train_losses"]["total"].item()
