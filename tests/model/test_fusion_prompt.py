"""SDPT's fusion-space tokens: the pseudo-inverse mapping, what the appended tokens change (and what
they cannot), and that a model without tokens runs the unchanged fusion."""

from __future__ import annotations

import pytest
import torch

from adapt.model.fusion import BiMultiHeadAttention
from adapt.model.fusion_prompt import FusionPrompt, enable_fusion_prompts, fusion_attentions
from tests.model.test_forward_oracle import mini_config


def _attention(seed: int = 0) -> BiMultiHeadAttention:
    torch.manual_seed(seed)
    attn = BiMultiHeadAttention(v_dim=64, l_dim=48, embed_dim=256, num_heads=8, dropout=0.1).eval()
    with torch.no_grad():  # non-zero biases, as in a trained checkpoint
        for proj in (attn.v_proj, attn.l_proj, attn.values_v_proj, attn.values_l_proj):
            proj.bias.normal_(0.0, 0.1)
    return attn


def _inputs(batch: int = 2, n: int = 37, t: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    mask = torch.zeros(batch, t, dtype=torch.long)
    mask[0, :7], mask[1, :5] = 1, 1
    return torch.randn(batch, n, 64), torch.randn(batch, t, 48), mask


def test_the_pseudo_inverse_maps_a_reachable_token_back_onto_itself():
    """``proj(inverse(t)) = t`` for every token the frozen projection can produce (the projection's
    range, a v_dim-dimensional subspace of the 256-wide space); others land on their projection."""
    attn = _attention()
    prompt = FusionPrompt(5, 256).double()
    for proj in (attn.v_proj.double(), attn.l_proj.double()):
        reachable = proj(torch.randn(5, proj.in_features, dtype=torch.float64))
        with torch.no_grad():
            prompt.tokens.copy_(reachable)
        torch.testing.assert_close(proj(prompt.inverse(proj)), reachable, rtol=1e-9, atol=1e-9)
        with torch.no_grad():
            prompt.tokens.normal_()
        once = proj(prompt.inverse(proj))
        with torch.no_grad():
            prompt.tokens.copy_(once)
        torch.testing.assert_close(proj(prompt.inverse(proj)), once, rtol=1e-9, atol=1e-9)  # idempotent


def test_appending_only_the_image_side_equals_sdpts_masked_text_side_too():
    """SDPT appends the text-side copies with attention mask 0: image locations never attend to them
    and their rows are cut off, so leaving them out gives the same outputs; the image rows' own
    update does not change at all (only the text stream reads the tokens)."""
    attn = _attention()
    v, l, mask = _inputs()
    with torch.no_grad():
        plain_v, plain_l = attn(v, l, mask)
    attn.fusion_prompt = FusionPrompt(6, 256)
    with torch.no_grad():
        got_v, got_l = attn(v, l, mask)
        prompt = attn.fusion_prompt
        v_tok, l_tok = prompt.inverse(attn.v_proj), prompt.inverse(attn.l_proj)
        b = v.shape[0]
        ref_v, ref_l = attn._attend(
            torch.cat([v, v_tok.expand(b, -1, -1)], dim=1),
            torch.cat([l, l_tok.expand(b, -1, -1)], dim=1),
            torch.cat([mask, torch.zeros(b, 6, dtype=mask.dtype)], dim=1),
        )
    torch.testing.assert_close(got_v, ref_v[:, : v.shape[1]], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_l, ref_l[:, : l.shape[1]], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_v, plain_v, rtol=1e-5, atol=1e-6)
    assert (got_l - plain_l).abs().max() > 1e-3
    assert got_v.shape == plain_v.shape and got_l.shape == plain_l.shape


def test_gradients_reach_the_tokens_and_no_weight_of_the_attention():
    attn = _attention().requires_grad_(False)
    attn.fusion_prompt = FusionPrompt(4, 256)
    v, l, mask = _inputs()
    delta_v, delta_l = attn(v, l, mask)
    (delta_v.square().sum() + delta_l.square().sum()).backward()
    assert [n for n, p in attn.named_parameters() if p.grad is not None] == ["fusion_prompt.tokens"]
    assert attn.fusion_prompt.tokens.grad.abs().sum() > 0


def test_layers_and_token_counts_are_configurable_and_checked():
    from adapt.model import build_glip

    with torch.device("meta"):
        model = build_glip(mini_config(), seed=None)
    assert len(fusion_attentions(model)) == model.cfg.head.num_layers == 2
    prompts = enable_fusion_prompts(model, 3, [1])
    names = [n for n, _ in model.named_parameters() if "fusion_prompt" in n]
    assert names == ["head.dyhead_tower.3.b_attn.attn.fusion_prompt.tokens"]
    assert prompts[0].tokens.shape == (3, model.cfg.head.fusion_embed_dim)
    with pytest.raises(ValueError, match=r"layers \[2\] must be distinct indices in 0..1"):
        enable_fusion_prompts(model, 3, [2])
    with pytest.raises(ValueError, match="at least one token"):
        FusionPrompt(0, 256)
