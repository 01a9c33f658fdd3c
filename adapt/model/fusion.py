"""Bi-directional image-text cross-attention with layer scale (official VLFuse, type "MHA-B").

One attention matrix between every image location (all five FPN levels flattened row-major and
concatenated) and every token serves both directions: softmax over tokens updates the image,
softmax over image locations updates the text. Numerics quirks reproduced on purpose:

* the logits are clamped to [-50000, 50000] (official CLAMP_MIN/MAX_FOR_UNDERFLOW/OVERFLOW);
* image->text: the mask adds -9e15 on pad tokens and **+1** on real tokens (the official code
  adds the 0/1 mask after filling its zeros); the +1 changes rounding only, but it is kept;
* text->image: the row max is subtracted and the result clamped again before the softmax, and
  there is **no mask** over image locations, padded regions included;
* the residual base is the *layer-normed* input: out = LN(x) + gamma * attn(LN(x), ...).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

CLAMP = 50000.0
MASK_VALUE = -9e15


class BiMultiHeadAttention(nn.Module):
    """Shared-logit cross-attention (official ``BiMultiHeadAttention``; 8 heads x 2048 at every size)."""

    def __init__(self, v_dim: int, l_dim: int, embed_dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"fusion embed_dim {embed_dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scale = self.head_dim**-0.5
        self.v_proj = nn.Linear(v_dim, embed_dim)
        self.l_proj = nn.Linear(l_dim, embed_dim)
        self.values_v_proj = nn.Linear(v_dim, embed_dim)
        self.values_l_proj = nn.Linear(l_dim, embed_dim)
        self.out_v_proj = nn.Linear(embed_dim, v_dim)
        self.out_l_proj = nn.Linear(embed_dim, l_dim)
        # Official: functional dropout (p = 0.1) on both attention-probability matrices. A module,
        # so switching dropout off (eval, or `.training = False`) reaches it like any other.
        self.dropout = nn.Dropout(dropout)
        projections = [self.v_proj, self.l_proj, self.values_v_proj, self.values_l_proj]
        for proj in [*projections, self.out_v_proj, self.out_l_proj]:
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def _heads(self, x: Tensor) -> Tensor:
        """[B, S, H*d] -> [B*H, S, d]."""
        b, s, _ = x.shape
        return x.view(b, s, self.num_heads, self.head_dim).transpose(1, 2).reshape(b * self.num_heads, s, -1)

    def _merge(self, x: Tensor, batch: int) -> Tensor:
        """[B*H, S, d] -> [B, S, H*d]."""
        s = x.shape[1]
        return x.view(batch, self.num_heads, s, self.head_dim).transpose(1, 2).reshape(batch, s, -1)

    def forward(self, v: Tensor, l: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """v [B, N, v_dim] image, l [B, T, l_dim] text, mask [B, T] -> (delta_v, delta_l)."""
        batch, n, _ = v.shape
        t = l.shape[1]
        if _exact_scale(self.scale):
            # Scaling by a power of two is exact, so scaling the [B, T] keys instead of the
            # [B, N] queries gives the same logits bit for bit, with a 100x smaller multiply.
            query = self._heads(self.v_proj(v))
            key = self._heads(self.l_proj(l) * self.scale)
        else:
            query = self._heads(self.v_proj(v) * self.scale)
            key = self._heads(self.l_proj(l))
        value_v = self._heads(self.values_v_proj(v))
        value_l = self._heads(self.values_l_proj(l))
        # The [B*H, N, T] logits are the largest tensors of the model (8 x 22400 x 256 per image at
        # 800 x 1344); without autograd they are updated in place instead of copied per step.
        inplace = not torch.is_grad_enabled()

        logits = torch.bmm(query, key.transpose(1, 2))  # [B*H, N, T]
        logits = logits.clamp_(-CLAMP, CLAMP) if inplace else logits.clamp(-CLAMP, CLAMP)

        # text -> image: softmax over all N image locations, stabilised by the max over them, no
        # mask. Official: on the transposed [B*H, T, N] logits; here over dim 1 of [B*H, N, T]
        # (the same values, without materialising a transposed copy of the largest tensor).
        logits_l = logits - logits.amax(dim=1, keepdim=True)
        logits_l = logits_l.clamp_(-CLAMP, CLAMP) if inplace else logits_l.clamp(-CLAMP, CLAMP)
        probs_l = logits_l.softmax(dim=1).transpose(1, 2)  # [B*H, T, N]
        del logits_l

        # image -> text: pads get -9e15, real tokens +1 (official quirk, see module docstring).
        # exp(-9e15 - max) is exactly 0, so token columns that are pads in every image of the
        # batch get probability 0 and add nothing: they are left out (GLIP always pads the prompt
        # to 256 tokens, a typical prompt has ~20), unless dropout would draw numbers for them.
        used = _used_tokens(mask) if not (self.training and self.dropout.p > 0) else t
        additive = torch.where(mask[:, :used] == 0, MASK_VALUE, 1.0).to(logits.dtype)
        logits_v = logits.view(batch, self.num_heads, n, t)[..., :used]
        if inplace and used == t:
            logits_v = logits_v.add_(additive[:, None, None, :]).view(batch * self.num_heads, n, used)
        else:
            logits_v = (logits_v + additive[:, None, None, :]).view(batch * self.num_heads, n, used)
        del logits
        probs_v = logits_v.softmax(dim=-1)
        del logits_v

        out_v = self._merge(torch.bmm(self.dropout(probs_v), value_l[:, :used]), batch)
        out_l = self._merge(torch.bmm(self.dropout(probs_l), value_v), batch)
        return self.out_v_proj(out_v), self.out_l_proj(out_l)


def _exact_scale(scale: float) -> bool:
    """True for a power of two (GLIP's 2048 / 8 heads gives 1/16), where x * scale is exact."""
    return math.frexp(scale)[0] == 0.5


def _used_tokens(mask: Tensor) -> int:
    """Token positions up to the last real token of any image of the batch (all of them when some
    image has no real token: the official softmax is then uniform over its pads)."""
    real = mask != 0
    if not bool(real.any(dim=1).all()):
        return mask.shape[1]
    return int(real.any(dim=0).nonzero().max()) + 1


class BiAttentionBlock(nn.Module):
    """LayerNorm both streams, cross-attend, add the layer-scaled update onto the *normed* input."""

    def __init__(
        self, v_dim: int, l_dim: int, embed_dim: int, num_heads: int, dropout: float, layer_scale: float
    ) -> None:
        super().__init__()
        self.layer_norm_v = nn.LayerNorm(v_dim)
        self.layer_norm_l = nn.LayerNorm(l_dim)
        self.attn = BiMultiHeadAttention(v_dim, l_dim, embed_dim, num_heads, dropout)
        self.gamma_v = nn.Parameter(torch.full((v_dim,), layer_scale))
        self.gamma_l = nn.Parameter(torch.full((l_dim,), layer_scale))

    def forward(self, v: Tensor, l: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        v = self.layer_norm_v(v)
        l = self.layer_norm_l(l)
        delta_v, delta_l = self.attn(v, l, mask)
        # Official residual: onto LN(x), not x (the paper writes O + O_t2i). Drop path is 0.
        return v + self.gamma_v * delta_v, l + self.gamma_l * delta_l


class VLFuse(nn.Module):
    """Tower step: fuse the five visual maps with the token features; returns both updated."""

    def __init__(
        self,
        v_dim: int,
        l_dim: int,
        embed_dim: int,
        num_heads: int,
        dropout: float,
        layer_scale: float,
        use_checkpoint: bool | str = True,
    ) -> None:
        super().__init__()
        self.b_attn = BiAttentionBlock(v_dim, l_dim, embed_dim, num_heads, dropout, layer_scale)
        # Official DYHEAD.USE_CHECKPOINT: recompute the fusion in backward to save memory (same
        # numbers; the RNG state is restored for dropout). Also in eval mode: prompt tuning
        # back-propagates through the frozen, eval-mode head. ``checkpoint_policy`` is the
        # configured true / false / "auto"; ``use_checkpoint`` the current decision, which for
        # "auto" starts on (safe anywhere) and is set per training step by
        # ``adapt.train.checkpointing.resolve_fusion_checkpointing``.
        if use_checkpoint not in (True, False, "auto"):
            raise ValueError(f"use_checkpoint must be True, False or 'auto', got {use_checkpoint!r}")
        self.checkpoint_policy: bool | str = use_checkpoint
        self.use_checkpoint = use_checkpoint is not False

    def forward(self, visual: list[Tensor], lang: Tensor, mask: Tensor) -> tuple[list[Tensor], Tensor]:
        shapes = [f.shape[-2:] for f in visual]
        # [B, C, H, W] per level -> one sequence [B, sum(H*W), C], row-major, P3..P7.
        v = torch.cat([f.flatten(2).transpose(1, 2) for f in visual], dim=1)
        if self.use_checkpoint and torch.is_grad_enabled():
            v, lang = checkpoint(self.b_attn, v, lang, mask, use_reentrant=False)
        else:
            v, lang = self.b_attn(v, lang, mask)
        v = v.transpose(1, 2)
        sizes = [h * w for h, w in shapes]
        out = [
            chunk.reshape(chunk.shape[0], chunk.shape[1], h, w)
            for chunk, (h, w) in zip(v.split(sizes, dim=2), shapes, strict=True)
        ]
        return out, lang
