"""Bi-directional image-text cross-attention with layer scale (official VLFuse, type "MHA-B").

One attention matrix between every image location (all five FPN levels flattened row-major and
concatenated) and every token serves both directions: softmax over tokens updates the image,
softmax over image locations updates the text. Numerics quirks reproduced on purpose:

* the logits are clamped to [-50000, 50000] (official CLAMP_MIN/MAX_FOR_UNDERFLOW/OVERFLOW);
* image->text: the mask adds -9e15 on pad tokens and **+1** on real tokens (the official code
  adds the 0/1 mask after filling its zeros); the +1 changes rounding only, but it is kept;
* text->image: the row max is subtracted and the result clamped again before the softmax (both
  without effect on the probabilities, see ``_folded``), and there is **no mask** over image
  locations, padded regions included;
* the residual base is the *layer-normed* input: out = LN(x) + gamma * attn(LN(x), ...).

Computed faster than the official order, without changing the numbers beyond rounding: the
projections are folded into the token side (``BiMultiHeadAttention._folded``), token columns that
are padding in every image are skipped, and evaluation updates the largest tensors in place.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


class ImageTokens(Protocol):
    """Extra image-side tokens of one attention (SDPT's, ``adapt.model.fusion_prompt.FusionPrompt``)."""

    def extend(self, v_proj: nn.Linear, v: Tensor) -> Tensor:
        """``v`` [B, N, v_dim] with the tokens appended, [B, N + K, v_dim]."""
        ...


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
        # SDPT's fusion-space tokens (adapt.model.fusion_prompt), only when a mode adds them.
        self.fusion_prompt: ImageTokens | None = None

    def forward(self, v: Tensor, l: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """v [B, N, v_dim] image, l [B, T, l_dim] text, mask [B, T] -> (delta_v, delta_l)."""
        if self.fusion_prompt is not None:
            # The tokens join the image sequence for the attention; their own rows are cut off.
            n = v.shape[1]
            delta_v, delta_l = self._attend(self.fusion_prompt.extend(self.v_proj, v), l, mask)
            return delta_v[:, :n], delta_l
        return self._attend(v, l, mask)

    def _attend(self, v: Tensor, l: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        image_side = (self.v_proj, self.values_v_proj, self.out_v_proj)
        if all(type(proj) is nn.Linear for proj in image_side):
            return self._folded(v, l, mask)
        return self._projected(v, l, mask)

    @property
    def _dropping(self) -> bool:
        return self.training and self.dropout.p > 0

    def _token_columns(self, mask: Tensor, dtype: torch.dtype) -> tuple[int, Tensor]:
        """How many token columns the image->text softmax needs, and its additive mask over them.

        Pads get -9e15, real tokens +1 (official quirk, see module docstring). exp(-9e15 - max) is
        exactly 0, so token columns that are pads in every image of the batch get probability 0
        and add nothing: they are left out (GLIP always pads the prompt to 256 tokens, a typical
        prompt has ~20), unless dropout would draw numbers for them."""
        used = mask.shape[1] if self._dropping else _used_tokens(mask)
        return used, torch.where(mask[:, :used] == 0, MASK_VALUE, 1.0).to(dtype)

    def _projected(self, v: Tensor, l: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """The official order, every location projected to ``embed_dim``: the fallback when an
        image-side projection is not a plain linear layer (e.g. a peft LoRA adapter wraps it), whose
        weight matrix the folding would need."""
        batch = v.shape[0]

        def split(x: Tensor) -> Tensor:  # [B, S, H*d] -> [B, H, S, d]
            return x.view(batch, x.shape[1], self.num_heads, -1).transpose(1, 2)

        def merge(x: Tensor) -> Tensor:  # [B, H, S, d] -> [B, S, H*d]
            return x.transpose(1, 2).reshape(batch, x.shape[2], -1)

        query, key = split(self.v_proj(v)), split(self.l_proj(l) * self.scale)
        logits = (query @ key.transpose(-1, -2)).clamp(-CLAMP, CLAMP)  # [B, H, N, T]
        used, additive = self._token_columns(mask, logits.dtype)
        probs_v = self.dropout((logits[..., :used] + additive[:, None, None, :]).softmax(dim=-1))
        probs_l = self.dropout(logits.softmax(dim=2))  # over N (see _folded for the official shift)
        out_v = probs_v @ split(self.values_l_proj(l[:, :used]))
        out_l = probs_l.transpose(-1, -2) @ split(self.values_v_proj(v))
        return self.out_v_proj(merge(out_v)), self.out_l_proj(merge(out_l))

    def _folded(self, v: Tensor, l: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """The official computation, re-associated so that nothing of width ``embed_dim`` (2048) is
        computed per image location. With q_h = v Wq_h^T + bq_h and k_h the head-h query and key,
        the logits are v (Wq_h^T k_h^T) + bq_h k_h^T: the query projection is folded into the
        [v_dim, T] key side, which costs no more than the logit product alone (GLIP's heads are 256
        wide, v_dim is 256 or less). Likewise the image-side value projection moves behind the
        text-side product, P_h (v Wv_h^T + bv_h) = (P_h v) Wv_h^T + (P_h 1) bv_h, and the image
        output projection in front of the image-side product, (P_h Vl_h) Wo_h^T = P_h (Vl_h Wo_h^T).
        GLIP-T's fusion layer goes from 122 to 51 GFLOP at 800 x 1333; the results differ only by the
        rounding of the re-association (~1e-7 relative, inside the oracle tolerances).
        """
        batch, n, v_dim = v.shape
        t = l.shape[1]
        heads, width = self.num_heads, self.head_dim
        # The attention scale goes onto the keys (exact for GLIP's 1/16, a power of two).
        key = (self.l_proj(l) * self.scale).view(batch, t, heads, width)
        fold = self.v_proj.weight.view(heads, width, v_dim)
        key_side = torch.einsum("bthd,hdv->bvht", key, fold).reshape(batch, v_dim, heads * t)
        key_bias = torch.einsum("bthd,hd->bht", key, self.v_proj.bias.view(heads, width))
        # [B, N, H*T]: location n, head h, token t. Without autograd (evaluation, or a frozen
        # tower fed frozen features as in the linear probe) the largest tensors of the model are
        # updated in place instead of copied per step.
        inplace = not (torch.is_grad_enabled() and _any_requires_grad(v, l, *self.parameters()))
        logits = torch.baddbmm(key_bias.reshape(batch, 1, heads * t), v, key_side)
        logits = logits.clamp_(-CLAMP, CLAMP) if inplace else logits.clamp(-CLAMP, CLAMP)

        # image -> text: softmax over the tokens (and only the columns that can be non-zero).
        dropping = self._dropping
        used, additive = self._token_columns(mask, logits.dtype)
        logits_v = logits.view(batch, n, heads, t)[..., :used] + additive[:, None, None, :]
        probs_v = logits_v.softmax(dim=-1)
        probs_v = (self.dropout(probs_v) if dropping else probs_v).view(batch, n, heads * used)
        del logits_v
        value_l = self.values_l_proj(l[:, :used]).view(batch, used, heads, width)
        out_fold = self.out_v_proj.weight.view(v_dim, heads, width)
        value_out = torch.einsum("buhd,vhd->bhuv", value_l, out_fold).reshape(batch, heads * used, v_dim)
        delta_v = torch.baddbmm(self.out_v_proj.bias, probs_v, value_out)

        # text -> image: softmax over all N image locations, no mask. The official code subtracts
        # the max over N and clamps again first; softmax subtracts that same max itself, and
        # whatever the second clamp changes (< -50000 after the shift) has probability exactly 0,
        # so both steps are left out.
        bias = self.values_v_proj.bias.view(1, heads, 1, width)
        if dropping:
            probs_l = self.dropout(logits.softmax(dim=1))  # [B, N, H*T]
            attended = torch.bmm(probs_l.transpose(1, 2), v)  # P_h v
            bias = bias * probs_l.sum(dim=1).view(batch, heads, t, 1)  # P_h 1: dropout moves it off 1
        elif inplace:
            # Evaluation: the softmax's exp in place on the logits (no longer needed), its
            # normalisation after the product with v (a [T, v_dim] division instead of [T, N]).
            logits.sub_(logits.amax(dim=1, keepdim=True)).exp_()
            attended = torch.bmm(logits.transpose(1, 2), v) / logits.sum(dim=1)[..., None]
        else:
            attended = torch.bmm(logits.softmax(dim=1).transpose(1, 2), v)
        del logits
        # Softmax rows sum to 1 (up to rounding, as in the official product): P_h 1 bv_h = bv_h.
        value_fold = self.values_v_proj.weight.view(heads, width, v_dim)
        value_v = torch.einsum("bhtv,hdv->bhtd", attended.view(batch, heads, t, v_dim), value_fold) + bias
        delta_l = self.out_l_proj(value_v.transpose(1, 2).reshape(batch, t, heads * width))
        return delta_v, delta_l


def _any_requires_grad(*tensors: Tensor) -> bool:
    return any(t.requires_grad for t in tensors)


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
