"""The text side of a family as adapt drives it: features computed once, an offset added to them.

A family's *text features* are its text encoder's output for one prompt, the tensor every token (or
class) feature of the rest of the network is computed from: Grounding DINO's BERT ``last_hidden_state``
[1, L, H] (before ``text_projection``), OWLv2's projected class embeddings [Q, D] (before their
normalisation). Computing them apart from the detector's forward is what lets a frozen text encoder
run once per prompt, lets GLIP-style prompt tuning add a learned offset to them, and lets a prompt
export replace the text encoder by the stored result.

* :class:`PromptOffset`: the zero-initialised, trainable offset, one row per text position (a token
  for Grounding DINO, a class query for OWLv2). It sits where a forward hook on the text backbone
  would act (tests use such a hook as the oracle), but is added by the family so that it also
  applies to features that were computed once and reused.
* :class:`StoredText` and :func:`given_text`: stand in for a transformers text backbone during a
  forward, so that transformers' own forward (masks, fusion, heads, loss) runs on given features.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from transformers.modeling_outputs import BaseModelOutput


class PromptOffset(nn.Module):
    """A learned offset per text position, zero at the start so that tuning starts at zero-shot.

    ``offset`` is [rows, dim]: rows is the text limit (Grounding DINO: ``max_text_len`` tokens, like
    GLIP's ``prompt_offset``; OWLv2: the prompt's number of class queries). Applied to features
    [..., L, dim] with L <= rows, it adds the first L rows; ``x + 0.0`` is exactly ``x``, so an
    untrained offset reproduces zero-shot bit for bit.
    """

    def __init__(
        self, rows: int, dim: int, dtype: torch.dtype = torch.float32, device: torch.device | None = None
    ):
        super().__init__()
        self.offset = nn.Parameter(torch.zeros(rows, dim, dtype=dtype, device=device))

    def forward(self, features: Tensor) -> Tensor:
        length = features.shape[-2]
        if length > self.offset.shape[0]:
            raise ValueError(
                f"text features have {length} positions but the prompt offset has {self.offset.shape[0]} rows"
            )
        if features.shape[-1] != self.offset.shape[1]:
            raise ValueError(
                f"text features are {features.shape[-1]}-wide but the prompt offset is {self.offset.shape[1]}"
            )
        return features + self.offset[:length].to(features.dtype)

    def extra_repr(self) -> str:
        return f"rows={self.offset.shape[0]}, dim={self.offset.shape[1]}"


class StoredText(nn.Module):
    """A text backbone that returns given features: transformers' forward calls it as it would call
    BERT (``input_ids`` first, masks and position ids after) and reads ``last_hidden_state``.

    ``hidden`` is [1, L, H] (broadcast over the batch) or [B, L, H]. Registered as a buffer, so a
    detector whose text encoder was replaced by a prompt export moves it with ``.to(device)``.
    """

    hidden: Tensor

    def __init__(self, hidden: Tensor) -> None:
        super().__init__()
        self.register_buffer("hidden", hidden, persistent=False)

    def forward(self, input_ids: Tensor, *args: object, **kwargs: object) -> BaseModelOutput:
        batch, length = input_ids.shape[:2]
        if self.hidden.shape[1] != length:
            raise ValueError(
                f"stored text features cover {self.hidden.shape[1]} tokens but the prompt has {length}"
            )
        return BaseModelOutput(last_hidden_state=self.hidden.expand(batch, -1, -1))


@contextmanager
def given_text(owner: nn.Module, attribute: str, hidden: Tensor) -> Iterator[None]:
    """Within the block, ``owner.<attribute>`` (a text backbone) returns ``hidden`` instead of running.

    The original module is put back even when the forward fails, so the detector never keeps the
    stand-in by accident.
    """
    original = getattr(owner, attribute)
    setattr(owner, attribute, StoredText(hidden))
    try:
        yield
    finally:
        setattr(owner, attribute, original)
