"""Learned context tokens before each class name: CoOp (Zhou et al., IJCV 2022) and DetPro (Du et
al., CVPR 2022) in GLIP's caption.

CoOp replaces a hand-written template ("a photo of a {}.") with M vectors learned in the text
encoder's *input* embedding space, placed before the class name and read by the frozen encoder;
one set shared by all classes, or one per class ("class-specific context"). In GLIP the classes
share one caption, so every class entry gets its own M context positions:

    "x x x x fish. x x x x jellyfish"    (M = 4; "x" is a placeholder word, one token each)

and the M word embeddings at those positions are replaced by the learned vectors before BERT's
embedding layer adds positions and token types (``BertModel(inputs_embeds=...)``). The context
words are a caption prompt's *prefix* (``adapt.prompt.CaptionPrompt``), so the class's positive
tokens (``label_to_tokens``) are its name's tokens, shifted past the context, exactly as for any
manual prompt; the context tokens count as negatives in the loss, like a prompt's prefix.

Initialised from words (``init_words="a photo of a"``), the caption reads those words and the
vectors are their own embeddings, so before training the model computes exactly what it computes
for that written caption; M = 0 is the plain task caption.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from transformers import BertModel, PreTrainedTokenizerFast

from adapt.model.language import TextFeatures, encode_text
from adapt.prompt import MAX_QUERY_LEN, CaptionPrompt, EncodedPrompt, encode_prompt

PLACEHOLDER = "x"  # one word piece; its embedding is replaced, so the word itself is never read


def context_words(length: int, init_words: str | None, tokenizer: PreTrainedTokenizerFast) -> str:
    """The words that stand for the context in the caption: ``init_words`` (which must be
    ``length`` word pieces), else ``length`` placeholders."""
    if length < 0:
        raise ValueError(f"context length must be 0 or more, got {length}")
    if init_words is None:
        return " ".join([PLACEHOLDER] * length)
    pieces = tokenizer(init_words, add_special_tokens=False)["input_ids"]
    if len(pieces) != length:
        raise ValueError(
            f"context init_words {init_words!r} are {len(pieces)} word pieces, but the context length is "
            f"{length}: make them agree"
        )
    return init_words.strip()


def encode_context_prompt(
    class_names: Sequence[str],
    tokenizer: PreTrainedTokenizerFast,
    words: str,
    caption_prompts: Sequence[CaptionPrompt | None] | None = None,
    labels: Sequence[int] | None = None,
    max_query_len: int = MAX_QUERY_LEN,
) -> tuple[EncodedPrompt, Tensor]:
    """The task caption with the context ``words`` right before every class name (after a manual
    prompt's own prefix), and the token positions [classes, M] of each class's context.

    Raises PromptTooLongError (adapt.prompt) when the caption no longer fits ``max_query_len``.
    """
    context = f"{words} " if words else ""
    prompts = []
    for i in range(len(class_names)):
        p = caption_prompts[i] if caption_prompts is not None else None
        prefix = p.prefix if p is not None else ""
        if prefix and not prefix[-1].isspace():
            prefix += " "  # keep the context words apart from the prompt's own
        prompts.append(
            CaptionPrompt(prefix=prefix + context, name=p.name if p else None, suffix=p.suffix if p else "")
        )
    encoded = encode_prompt(class_names, tokenizer, prompts, labels, max_query_len)
    length = len(tokenizer(words, add_special_tokens=False)["input_ids"]) if words else 0
    encoding = tokenizer(encoded.caption, max_length=max_query_len, padding="max_length", truncation=True)
    positions = []
    for name, (start, _) in zip(class_names, encoded.char_spans, strict=True):
        first = start - len(context)
        tokens = sorted({t for c in range(first, start) if (t := encoding.char_to_token(c)) is not None})
        if len(tokens) != length:
            raise ValueError(
                f"the context before class {name!r} became {len(tokens)} tokens, not {length}: "
                "choose context words that stay separate word pieces"
            )
        positions.append(tokens)
    return encoded, torch.tensor(positions, dtype=torch.long).reshape(len(class_names), length)


def word_embeddings(bert: BertModel) -> nn.Embedding:
    """BERT's input word embedding table (the vectors a context replaces and starts from)."""
    table = bert.embeddings.word_embeddings
    assert isinstance(table, nn.Embedding)
    return table


class ContextPrompt(nn.Module):
    """The learned context of one caption: ``context`` [M, D] (shared) or [classes, M, D] (per
    class), written over the word embeddings at ``positions`` [classes, M] of ``input_ids`` [L]."""

    def __init__(self, context: Tensor, positions: Tensor, input_ids: Tensor) -> None:
        super().__init__()
        if context.dim() not in (2, 3) or positions.dim() != 2:
            raise ValueError(
                f"context must be [M, D] or [classes, M, D] and positions [classes, M]; got "
                f"{list(context.shape)} and {list(positions.shape)}"
            )
        m = context.shape[-2]
        if positions.shape[1] != m or (context.dim() == 3 and context.shape[0] != positions.shape[0]):
            raise ValueError(
                f"context {list(context.shape)} does not fit positions {list(positions.shape)} "
                "([M, D] or [classes, M, D] for [classes, M])"
            )
        self.context = nn.Parameter(context)
        self.positions: Tensor
        self.input_ids: Tensor
        self.register_buffer("positions", positions.long(), persistent=False)
        self.register_buffer("input_ids", input_ids.long(), persistent=False)

    @property
    def class_specific(self) -> bool:
        return self.context.dim() == 3

    def extra_repr(self) -> str:
        kind = "per class" if self.class_specific else "shared"
        return f"context={tuple(self.context.shape)} ({kind})"

    def vectors(self) -> Tensor:
        """One vector per context position, in ``positions.reshape(-1)`` order, [classes * M, D]."""
        context: Tensor = self.context
        if not self.class_specific:
            context = context[None].expand(self.positions.shape[0], -1, -1)
        return context.reshape(-1, context.shape[-1])

    def encode(self, bert: BertModel, input_ids: Tensor, attention_mask: Tensor) -> TextFeatures:
        """BERT features of the caption with the learned context in place of the context words."""
        if input_ids.shape[-1] != self.input_ids.shape[0] or not bool((input_ids == self.input_ids).all()):
            raise ValueError(
                "this context was learned in the task's own caption (at its token positions); "
                "other captions or class lists cannot use it"
            )
        embeds = word_embeddings(bert)(input_ids)
        vectors = self.vectors().to(embeds.dtype)
        embeds = embeds.index_copy(1, self.positions.reshape(-1), vectors[None].expand(len(embeds), -1, -1))
        return encode_text(bert, input_ids, attention_mask, inputs_embeds=embeds)
