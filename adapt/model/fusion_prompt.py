"""Fusion-space prompts: SDPT (Synchronous Dual Prompt Tuning, Zhou et al., ECCV 2024).

GLIP's fusion attention compares image queries and text keys in one 2048-wide space (8 heads x
256). SDPT learns K tokens *in that space*, per fusion layer, and maps them back into each stream
through the pseudo-inverse of that stream's frozen query projection, ``x = (t - b) pinv(W^T)``,
so that ``proj(x)`` is the token's least-squares image in the space the projection reaches (the
token itself when it lies there). The mapped tokens are appended to the layer-normed sequences
for the attention only; their own outputs are cut off after it, so the streams keep their shapes
and nothing else of the network changes. Everything but the tokens stays frozen.

What the appended tokens do, read from SDPT's released code (``fuse_helper.py``, mode
``vpt_only=-4``; facts, no code copied): the text-side copies enter with attention mask 0, so no
image location ever attends to them (probability exactly 0 after the -9e15 fill) and their own
rows are cut off: they change no output. The image-side copies are attended to by every text
token, next to the N image locations (the text->image softmax has no mask): the tokens are extra
"visual" evidence the text stream reads at every prompted layer, and through the text stream they
reach the later layers' image updates. adapt therefore appends only the image-side copies; appending
the masked text-side copies too gives the same numbers (``tests/model/test_fusion_prompt.py``) at
the cost of K more key columns.

Defaults are the released code's (``MODEL.PROMPT.NUM_TOKENS`` 100, ``cpt_layers`` every fusion
layer, ``ECCV.init_way`` uniform(-1, 1)); its README's example uses 700 tokens. Zero tokens are not
a no-op (an appended token always takes attention mass), so the method has none besides K = 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from adapt.model.fusion import BiMultiHeadAttention, VLFuse

INITS = ("uniform", "normal", "zeros")


class FusionPrompt(nn.Module):
    """K learnable tokens in one fusion layer's attention space (``tokens`` [K, embed_dim])."""

    def __init__(self, num_tokens: int, embed_dim: int, init: str = "uniform") -> None:
        super().__init__()
        if num_tokens < 1:
            raise ValueError(f"a fusion prompt needs at least one token, got {num_tokens}")
        if init not in INITS:
            raise ValueError(f"fusion prompt init must be one of {INITS}, got {init!r}")
        self.tokens = nn.Parameter(torch.empty(num_tokens, embed_dim))
        with torch.no_grad():
            if init == "uniform":  # SDPT's default (ECCV.init_way)
                self.tokens.uniform_(-1.0, 1.0)
            elif init == "normal":
                self.tokens.normal_(0.0, 1.0)
            else:
                self.tokens.zero_()
        # pinv(W^T) of the frozen projection, computed once per weight version (an SVD per
        # forward would cost more than the tokens' attention).
        self._inverse: dict[tuple[int, ...], Tensor] = {}

    def extra_repr(self) -> str:
        return f"tokens={tuple(self.tokens.shape)}"

    def pseudo_inverse(self, proj: nn.Linear) -> Tensor:
        """``pinv(W^T)`` [embed_dim, in_features] of a frozen ``proj`` (no gradient through it, as
        in SDPT, which reads ``weight.data``)."""
        weight = proj.weight
        key = (weight.data_ptr(), weight._version, proj.bias.data_ptr(), proj.bias._version)
        inverse = self._inverse.get(key)
        if inverse is None or inverse.device != weight.device or inverse.dtype != weight.dtype:
            with torch.no_grad():
                inverse = torch.linalg.pinv(weight.detach().double().T).to(weight.dtype)
            self._inverse = {key: inverse}
        return inverse

    def inverse(self, proj: nn.Linear) -> Tensor:
        """The tokens in ``proj``'s input space, [K, in_features]: ``(t - b) pinv(W^T)``."""
        tokens = self.tokens.to(proj.weight.dtype)
        return (tokens - proj.bias.detach()) @ self.pseudo_inverse(proj)

    def extend(self, v_proj: nn.Linear, v: Tensor) -> Tensor:
        """The image sequence [B, N, v_dim] with the tokens appended, [B, N + K, v_dim] (``v_proj``:
        the attention's frozen image query projection)."""
        extra = self.inverse(v_proj)
        return torch.cat([v, extra[None].expand(v.shape[0], -1, -1).to(v.dtype)], dim=1)


def fusion_attentions(model: nn.Module) -> list[BiMultiHeadAttention]:
    """The attention of every fusion layer, in tower order (layer i is ``dyhead_tower[3i]``)."""
    return [m.b_attn.attn for m in model.modules() if isinstance(m, VLFuse)]


def enable_fusion_prompts(
    model: nn.Module, num_tokens: int, layers: Sequence[int] | None = None, init: str = "uniform"
) -> list[FusionPrompt]:
    """Give the fusion layers ``layers`` (indices into the tower's fusion layers; None: all) a
    :class:`FusionPrompt` of ``num_tokens`` tokens; layers that already have one keep it.

    Tokens are drawn from the global RNG (the run's seed). Returns the prompts in layer order.
    """
    attentions = fusion_attentions(model)
    if not attentions:
        raise ValueError("fusion prompts need a model with early fusion (model.arch.head.early_fusion)")
    chosen = list(range(len(attentions))) if layers is None else [int(i) for i in layers]
    bad = [i for i in chosen if not 0 <= i < len(attentions)]
    if bad or len(set(chosen)) != len(chosen) or not chosen:
        raise ValueError(
            f"fusion prompt layers {list(layers or [])} must be distinct indices in 0..{len(attentions) - 1} "
            f"(the model has {len(attentions)} fusion layers)"
        )
    prompts = []
    for i in chosen:
        attn = attentions[i]
        prompt = attn.fusion_prompt
        if prompt is None:
            ref = attn.v_proj.weight
            prompt = FusionPrompt(num_tokens, attn.v_proj.out_features, init).to(ref.device, ref.dtype)
            attn.fusion_prompt = prompt
        if not isinstance(prompt, FusionPrompt):
            raise ValueError(f"fusion layer {i} already carries other image tokens ({type(prompt).__name__})")
        prompts.append(prompt)
    return prompts
