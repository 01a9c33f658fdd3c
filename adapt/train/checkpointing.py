"""``use_checkpoint: auto``: recompute the fusion in backward only when its activations do not fit.

The official GLIP always checkpoints the fusion (DYHEAD.USE_CHECKPOINT). That is the right call for
full fine-tuning on a 16 GB GPU, but it costs prompt tuning a second forward of all six fusion
layers (GLIP-T, batch 1, short side 320: 443 instead of 379 GFLOP per step), because the prompt's
gradient has to pass back through every layer. The numbers are the same either way (the RNG state is
restored for dropout), so the choice is only memory against time, and it can be made per step:

* estimate what the fusion layers would keep for backward without checkpointing, from the batch's
  padded image size (every image location of every FPN level attends to every token position);
* checkpoint unless that fits in half of the memory free right now (CUDA: the driver's free memory
  plus what PyTorch's allocator holds unused; CPU: the OS's available memory), the other half being
  left to everything else the step keeps (backbone, DyConv tower, gradients, optimiser state).

The estimate is a deliberate over-count (``tests/train/test_checkpointing.py`` checks it against
the bytes autograd really saves on the mini model, in prompt tuning and full fine-tuning).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from adapt.model.config import GLIPConfig
from adapt.model.fusion import VLFuse

# Share of the free memory the fusion activations may take before checkpointing is kept on.
FREE_MEMORY_SHARE = 0.5
# Saved-for-backward tensors of one fusion layer, in units of one [B, N, heads * T] tensor (the
# logits of every location, head and token): the clamp's input and the two softmax outputs (~3
# units; nothing 2048 wide per location is computed, see ``adapt.model.fusion``); active dropout
# adds its two outputs and boolean masks, trainable weights the [B, N, v_dim] inputs of their
# products.
UNITS_FROZEN = 3.0
UNITS_DROPOUT = 2.5
UNITS_WEIGHTS = 0.5
# The text side, in units of [B, T, embed]: the keys, the values and the output projection's input
# (frozen), and the head-layout copies the weight products keep (trainable). Negligible at
# detection sizes, where N >> T, but not on tiny inputs.
TEXT_UNITS_FROZEN = 2.5
TEXT_UNITS_WEIGHTS = 3.5
BYTES_PER_ELEMENT = 4  # fp32 (an over-count under fp16 autocast)


def feature_locations(height: int, width: int, strides: Sequence[int]) -> int:
    """Image locations of all FPN levels for a padded [H, W] input (P6/P7 by stride-2 convs: ceil)."""
    total = 0
    h, w = height, width
    previous = 1
    for stride in strides:
        factor = stride // previous
        h, w = math.ceil(h / factor), math.ceil(w / factor)
        previous = stride
        total += h * w
    return total


def _fusion_units(fuse: VLFuse) -> tuple[float, float]:
    """(image units, text units) one fusion layer keeps for backward."""
    units, text_units = UNITS_FROZEN, TEXT_UNITS_FROZEN
    if fuse.training and fuse.b_attn.attn.dropout.p > 0:
        units += UNITS_DROPOUT
    if any(p.requires_grad for p in fuse.parameters()):
        units += UNITS_WEIGHTS
        text_units += TEXT_UNITS_WEIGHTS
    return units, text_units


def fusion_activation_bytes(model: nn.Module, batch: int, height: int, width: int) -> int:
    """What the fusion layers of ``model`` keep for backward without checkpointing, over-counted."""
    fuses = [m for m in model.modules() if isinstance(m, VLFuse)]
    if not fuses:
        return 0
    cfg: GLIPConfig = model.cfg  # type: ignore[assignment]  # a GLIP: the only model with VLFuse layers
    locations = feature_locations(height, width, cfg.anchors.strides)
    attn: Any = fuses[0].b_attn.attn
    unit = batch * locations * attn.num_heads * cfg.language.max_query_len * BYTES_PER_ELEMENT
    text_unit = batch * cfg.language.max_query_len * attn.num_heads * attn.head_dim * BYTES_PER_ELEMENT
    total = 0.0
    for fuse in fuses:
        units, text_units = _fusion_units(fuse)
        total += units * unit + text_units * text_unit
    return int(total)


def available_memory(device: torch.device) -> int:
    """Bytes a step could still allocate on ``device`` (CUDA: free + allocator cache; CPU: available)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    import psutil

    return int(psutil.virtual_memory().available)


def resolve_fusion_checkpointing(model: nn.Module, images: torch.Tensor) -> bool | None:
    """Decide ``use_checkpoint`` for this batch on every fusion layer configured "auto".

    Returns the decision (True: recompute in backward), or None when no layer is "auto".
    """
    auto = [m for m in model.modules() if isinstance(m, VLFuse) and m.checkpoint_policy == "auto"]
    if not auto:
        return None
    need = fusion_activation_bytes(model, images.shape[0], images.shape[-2], images.shape[-1])
    use = need > FREE_MEMORY_SHARE * available_memory(images.device)
    for fuse in auto:
        fuse.use_checkpoint = use
    return use
