"""The CPU fast paths compute what the official formulas compute.

* ``adapt.model.deform_conv``: the sampled-GEMM modulated deformable conv (and its backward)
  against torchvision's kernel, including samples off the map, corners straddling its border,
  stride 2 and the coarser level's reinterpreted offsets.
* ``adapt.model.fusion``: the re-associated cross-attention against the official formula written out
  step by step (projections, clamps, max subtraction, -9e15 / +1 mask, per-head products), in
  float64 so that only the rounding of the re-association can differ, for evaluation (in-place
  exp), autograd (softmax) and training with dropout.

The oracle tests (``test_forward_oracle.py``) check the same paths end to end against the official
code's numbers; these cover shapes and cases the fixture does not reach.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torchvision.ops import deform_conv2d

from adapt.flops import count_flops
from adapt.model import deform_conv
from adapt.model.deform_conv import modulated_deform_conv3x3
from adapt.model.dyconv import _reinterpret
from adapt.model.fusion import CLAMP, MASK_VALUE, BiMultiHeadAttention

# --------------------------------------------------------------------------------------------------
# deformable conv


def deform_inputs(batch: int, size: tuple[int, int], out: tuple[int, int], dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    c = 8
    x = torch.randn(batch, c, *size, generator=g, dtype=dtype)
    # Offsets up to +-4 px: many samples fall off the map or straddle its border; a quarter are
    # whole numbers, which puts samples exactly on -1, 0, H-1 and H.
    offset = torch.randn(batch, 18, *out, generator=g, dtype=dtype) * 2.5
    offset[..., ::2, :] = offset[..., ::2, :].round()
    mask = torch.rand(batch, 9, *out, generator=g, dtype=dtype)
    weight = torch.randn(5, c, 3, 3, generator=g, dtype=dtype) * 0.2
    bias = torch.randn(5, generator=g, dtype=dtype)
    return x, offset, mask, weight, bias


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True])
def test_sampled_deform_conv_matches_torchvision(stride: int, channels_last: bool):
    x, offset, mask, weight, bias = deform_inputs(
        2, (9, 13), (9 // stride + 1, 13 // stride + 1), torch.float32
    )
    if stride == 1:
        offset, mask = offset[..., :9, :13], mask[..., :9, :13]
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ref = deform_conv2d(x, offset, weight, bias, stride=stride, padding=1, mask=mask)
    with torch.no_grad():
        ours = modulated_deform_conv3x3(x, offset, mask, weight, bias, stride)
    # Only the order of additions differs: observed <= 1e-6 on outputs of magnitude ~3.
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_sampled_deform_conv_float64_and_reinterpreted_offsets():
    """In float64 the two agree to rounding; the coarser level reads level-l offsets reinterpreted."""
    x, offset, mask, weight, bias = deform_inputs(2, (4, 6), (8, 11), torch.float64, seed=1)
    offset, mask = _reinterpret(offset, 4, 6), _reinterpret(mask, 4, 6)
    ref = deform_conv2d(x, offset, weight, bias, stride=1, padding=1, mask=mask)
    with torch.no_grad():
        ours = modulated_deform_conv3x3(x, offset, mask, weight, bias)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("stride", [1, 2])
def test_sampled_deform_conv_gradients_match_torchvision(stride: int):
    """Input, offset, mask, weight and bias gradients, float64; the whole-number offsets put samples
    exactly on the -1 border line, where torchvision's backward takes the inside derivative."""
    out = (9, 13) if stride == 1 else (5, 7)
    tensors = deform_inputs(2, (9, 13), out, torch.float64, seed=5)
    ref_in = [t.clone().requires_grad_() for t in tensors]
    ref = deform_conv2d(ref_in[0], ref_in[1], ref_in[3], ref_in[4], stride=stride, padding=1, mask=ref_in[2])
    grad_out = torch.randn_like(ref)
    ours_in = [t.clone().requires_grad_() for t in tensors]
    ours = modulated_deform_conv3x3(*ours_in, stride)
    expected = torch.autograd.grad(ref, ref_in, grad_out)
    for a, b in zip(torch.autograd.grad(ours, ours_in, grad_out), expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_sampled_deform_conv_flops_and_the_gradients_it_skips(monkeypatch: pytest.MonkeyPatch):
    """Counted as its GEMMs (as torchvision's formula counts it); frozen weights (prompt tuning) skip
    the weight-gradient GEMM, and torchvision is not called on the CPU at all."""
    monkeypatch.setattr(deform_conv, "deform_conv2d", None)
    x, offset, mask, weight, bias = deform_inputs(2, (8, 8), (8, 8), torch.float32)
    x.requires_grad_()
    forward = count_flops(lambda: modulated_deform_conv3x3(x, offset, mask, weight, bias))
    assert forward.total == 2 * 2 * 5 * 8 * 9 * 64  # 2 x N x Cout x Cin x 3 x 3 x Ho x Wo
    frozen = count_flops(lambda: modulated_deform_conv3x3(x, offset, mask, weight, bias).sum().backward())
    weight.requires_grad_()
    trained = count_flops(lambda: modulated_deform_conv3x3(x, offset, mask, weight, bias).sum().backward())
    assert (frozen.total, trained.total) == (2 * forward.total, 3 * forward.total)
    assert weight.grad is not None and x.grad is not None


# --------------------------------------------------------------------------------------------------
# fusion attention


def official_attention(attn: BiMultiHeadAttention, v: Tensor, l: Tensor, mask: Tensor, dropout=None):
    """The official BiMultiHeadAttention step by step ([B*H, ...] head layout, no re-association)."""
    b = v.shape[0]
    h, d = attn.num_heads, attn.head_dim

    def heads(x: Tensor) -> Tensor:
        return x.view(b, -1, h, d).transpose(1, 2).reshape(b * h, -1, d)

    def merge(x: Tensor) -> Tensor:
        return x.view(b, h, -1, d).transpose(1, 2).reshape(b, -1, h * d)

    drop = dropout or (lambda p, kind: p)
    query = heads(attn.v_proj(v) * attn.scale)
    key = heads(attn.l_proj(l))
    logits = torch.bmm(query, key.transpose(1, 2)).clamp(-CLAMP, CLAMP)  # [B*H, N, T]
    logits_t = logits.transpose(1, 2)
    logits_l = (logits_t - logits_t.max(dim=-1, keepdim=True).values).clamp(-CLAMP, CLAMP)
    probs_l = drop(logits_l.softmax(dim=-1), "l")  # [B*H, T, N]
    additive = mask.to(v.dtype).masked_fill(mask == 0, MASK_VALUE)  # 0/1 mask, zeros filled, added
    logits_v = logits + additive.repeat_interleave(h, dim=0)[:, None, :]
    probs_v = drop(logits_v.softmax(dim=-1), "v")  # [B*H, N, T]
    out_v = merge(torch.bmm(probs_v, heads(attn.values_l_proj(l))))
    out_l = merge(torch.bmm(probs_l, heads(attn.values_v_proj(v))))
    return attn.out_v_proj(out_v), attn.out_l_proj(out_l)


def fusion_inputs(v_dim: int, l_dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(2, 23, v_dim, generator=g, dtype=torch.float64)
    l = torch.randn(2, 7, l_dim, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0]])
    return v, l, mask


@pytest.mark.parametrize(
    ("v_dim", "embed_dim", "heads"),
    [(16, 64, 4), (16, 32, 4)],  # head width >= v_dim (every GLIP) and < v_dim (folding still exact)
)
@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("wrapped", [False, True])
def test_reassociated_fusion_equals_official_formula(
    v_dim: int, embed_dim: int, heads: int, grad: bool, wrapped: bool
):
    torch.manual_seed(0)
    attn = BiMultiHeadAttention(v_dim, 12, embed_dim, heads, dropout=0.1).double().eval()
    for p in attn.parameters():  # non-zero biases, logits of a few units
        nn.init.normal_(p, std=0.3)
    v, l, mask = fusion_inputs(v_dim, 12)
    ref = official_attention(attn, v, l, mask)
    if wrapped:  # a projection that is not a plain nn.Linear (an adapter) takes the unfolded path
        attn.values_v_proj = nn.Sequential(attn.values_v_proj)
    with torch.set_grad_enabled(grad):  # evaluation's in-place exp path / autograd's softmax path
        ours = attn(v, l, mask)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_reassociated_fusion_with_an_image_without_real_tokens():
    """All-pad prompt: no token column can be left out, the official softmax is uniform over pads."""
    attn = BiMultiHeadAttention(16, 12, 64, 4, dropout=0.1).double().eval()
    v, l, mask = fusion_inputs(16, 12, seed=2)
    mask[1] = 0
    with torch.no_grad():
        for a, b in zip(attn(v, l, mask), official_attention(attn, v, l, mask), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


class PatternDropout(nn.Dropout):
    """A deterministic 'dropout' whose factor depends on (image, head, location, token) only, so the
    fused [B, N, H*T] layout and the official [B*H, ...] one can be given the same draw."""

    def __init__(self, heads: int, n: int, t: int) -> None:
        super().__init__(p=0.5)
        self.heads, self.n, self.t = heads, n, t

    @staticmethod
    def factor(b: Tensor, h: Tensor, n: Tensor, t: Tensor) -> Tensor:
        return 2.0 * ((b + 2 * h + 3 * n + 5 * t) % 3 != 0)

    def grid(self, batch: int) -> tuple[Tensor, ...]:
        return torch.meshgrid(
            torch.arange(batch),
            torch.arange(self.heads),
            torch.arange(self.n),
            torch.arange(self.t),
            indexing="ij",
        )

    def forward(self, x: Tensor, kind: str | None = None) -> Tensor:
        batch = x.shape[0] // self.heads if kind else x.shape[0]
        f = self.factor(*self.grid(batch)).to(x.dtype)  # [B, H, N, T]
        if kind == "v":  # official probs_v [B*H, N, T]
            return x * f.reshape(batch * self.heads, self.n, self.t)
        if kind == "l":  # official probs_l [B*H, T, N]
            return x * f.transpose(2, 3).reshape(batch * self.heads, self.t, self.n)
        return x * f.permute(0, 2, 1, 3).reshape(x.shape)  # ours: [B, N, H, T] or [B, N, H*T]


def test_reassociated_fusion_with_dropout_in_training():
    """Dropout leaves rows not summing to 1: the value bias is then weighted by the kept mass."""
    attn = BiMultiHeadAttention(16, 12, 64, 4, dropout=0.5).double().train()
    for p in attn.parameters():
        nn.init.normal_(p, std=0.3)
    v, l, mask = fusion_inputs(16, 12, seed=3)
    attn.dropout = PatternDropout(4, v.shape[1], l.shape[1])
    ours = attn(v, l, mask)
    ref = official_attention(attn, v, l, mask, dropout=attn.dropout)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_lora_adapters_on_the_fusion_projections_are_used_and_trained():
    """peft wraps the projections the folding reads weights from: the fusion then projects every
    location as the official code does, so the adapters change the output and get gradients."""
    import copy

    from peft import LoraConfig, get_peft_model

    attn = BiMultiHeadAttention(16, 12, 64, 4, dropout=0.0).double()
    targets = ["v_proj", "values_v_proj", "out_v_proj", "l_proj"]
    model = get_peft_model(attn, LoraConfig(r=2, lora_alpha=4, target_modules=targets))
    for name, p in model.named_parameters():
        if "lora_B" in name:  # peft starts B at 0 (a no-op adapter); make it count
            nn.init.normal_(p, std=0.3)
    v, l, mask = fusion_inputs(16, 12, seed=4)
    out_v, out_l = model(v, l, mask)
    merged = copy.deepcopy(model).merge_and_unload()  # plain nn.Linear again, adapter weights merged
    for a, b in zip((out_v, out_l), official_attention(merged, v, l, mask), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    (out_v.square().sum() + out_l.square().sum()).backward()
    lora_grads = {n: p.grad for n, p in model.named_parameters() if "lora_A" in n}
    assert len(lora_grads) == len(targets)
    assert all(g is not None and g.abs().sum() > 0 for g in lora_grads.values())
