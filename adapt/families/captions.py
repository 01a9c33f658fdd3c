"""Prompts in each family's own format, and class lists split to fit the text limit.

* Grounding DINO reads one caption of dot-terminated phrases, ``"fish . jellyfish . penguin ."``
  (IDEA-Research's format; transformers' processor joins a class list as ``"fish. jellyfish."``,
  which BERT tokenises identically). A class is grounded on the tokens of its name, found from the
  tokenizer's character offsets; its phrase is also what transformers' loss calls the class (the
  tokens between two delimiters, ``build_label_maps``), and the two are checked to agree.
* OWLv2 reads one query per class, each tokenised on its own. Its prompt is stored in the same
  :class:`~adapt.prompt.EncodedPrompt` as GLIP's: the caption lists the queries one per line,
  ``char_spans`` locate them, ``input_ids`` is [Q, L] and ``label_to_tokens`` maps each label to
  its query's row, so exports record either family the same way.

A class list longer than the text limit is split as adapt splits GLIP's (``encode_prompt_chunks``):
consecutive chunks that each fit, every class keeping its global label, one forward pass per chunk.
A prompt that does not fit raises :class:`~adapt.prompt.PromptTooLongError` instead of being
truncated (transformers truncates Grounding DINO's text at ``max_text_len`` without a word).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from transformers import PreTrainedTokenizerBase

from adapt.prompt import EncodedPrompt, PromptTooLongError
from adapt.prompt import chunk_classes as chunk_prompts

PHRASE_END = " ."
PHRASE_SEPARATOR = " "
QUERY_SEPARATOR = "\n"


def _labels(class_names: Sequence[str], labels: Sequence[int] | None) -> list[int]:
    out = list(range(1, len(class_names) + 1)) if labels is None else [int(x) for x in labels]
    if len(out) != len(class_names):
        raise ValueError(f"{len(out)} labels for {len(class_names)} classes")
    return out


def grounding_caption(class_names: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """``"fish . jellyfish ."`` and each name's ``[start, end)`` in it.

    Names are used as written (BERT lowercases); a name holding a phrase delimiter ("." or "?",
    which Grounding DINO's text masks and loss treat as the end of a phrase) or no word at all is
    refused by name, since it would split or empty its class.
    """
    caption, spans = "", []
    for name in class_names:
        if not name.strip() or any(d in name for d in ".?"):
            raise ValueError(
                f"class name {name!r} cannot be a Grounding DINO phrase: it is empty or holds '.' or '?', "
                "which end a phrase"
            )
        if caption:
            caption += PHRASE_SEPARATOR
        start = len(caption)
        caption += name
        spans.append((start, len(caption)))
        caption += PHRASE_END
    return caption, spans


def tokens_in_span(offsets: Sequence[tuple[int, int]], start: int, end: int) -> list[int]:
    """Positions of the tokens whose characters lie inside ``[start, end)`` (special tokens, which
    cover no character, never do)."""
    return [i for i, (a, b) in enumerate(offsets) if b > a and a >= start and b <= end]


def encode_grounding_prompt(
    class_names: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    max_text_len: int,
    labels: Sequence[int] | None = None,
    delimiter_groups: Callable[[torch.Tensor], list[list[int]]] | None = None,
) -> EncodedPrompt:
    """One Grounding DINO caption with its class -> token map; no padding (transformers' processor
    does not pad a single caption either, and a padded token changes nothing but the cost).

    ``delimiter_groups(input_ids)`` gives the token positions transformers' loss assigns to each
    phrase; when given, every class must own exactly its phrase's tokens.
    """
    class_names = list(class_names)
    labels = _labels(class_names, labels)
    caption, spans = grounding_caption(class_names)
    encoding = tokenizer(caption, return_offsets_mapping=True, add_special_tokens=True)
    ids = list(encoding["input_ids"])
    if len(ids) > max_text_len:
        raise PromptTooLongError(class_names[-1:], len(ids), max_text_len)
    offsets = [tuple(o) for o in encoding["offset_mapping"]]
    label_to_tokens: dict[int, list[int]] = {}
    for label, name, (start, end) in zip(labels, class_names, spans, strict=True):
        tokens = tokens_in_span(offsets, start, end)
        if not tokens:
            raise ValueError(f"class name {name!r} maps to no token of the caption {caption!r}")
        label_to_tokens[label] = tokens
    input_ids = torch.tensor(ids, dtype=torch.long)
    if delimiter_groups is not None:
        groups = delimiter_groups(input_ids)
        expected = [label_to_tokens[label] for label in labels]
        if groups != expected:
            raise ValueError(
                f"caption {caption!r}: the phrases transformers' loss sees ({groups}) are not the "
                f"classes' tokens ({expected}); check the class names for punctuation read as '.' or '?'"
            )
    return EncodedPrompt(
        caption=caption,
        class_names=class_names,
        labels=labels,
        input_ids=input_ids,
        attention_mask=torch.tensor(encoding["attention_mask"], dtype=torch.long),
        label_to_tokens=label_to_tokens,
        char_spans=spans,
    )


def encode_query_prompt(
    class_names: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    max_query_len: int,
    labels: Sequence[int] | None = None,
) -> EncodedPrompt:
    """OWLv2's queries: one per class, each padded to ``max_query_len`` tokens as transformers'
    processor pads them (``padding="max_length"``); a query that needs more tokens is refused (the
    processor would truncate it, and its class embedding would then read a cut name)."""
    class_names = list(class_names)
    labels = _labels(class_names, labels)
    for name in class_names:
        if not name.strip():
            raise ValueError("an OWLv2 query cannot be empty")
        if QUERY_SEPARATOR in name:
            raise ValueError(f"class name {name!r} holds a line break; OWLv2 prompts list one query per line")
        n_tokens = len(tokenizer(name)["input_ids"])
        if n_tokens > max_query_len:
            raise PromptTooLongError([name], n_tokens, max_query_len)
    encoding = tokenizer(class_names, padding="max_length", max_length=max_query_len, return_tensors="pt")
    caption, spans = "", []
    for name in class_names:
        if caption:
            caption += QUERY_SEPARATOR
        spans.append((len(caption), len(caption) + len(name)))
        caption += name
    return EncodedPrompt(
        caption=caption,
        class_names=class_names,
        labels=labels,
        input_ids=encoding["input_ids"],
        attention_mask=encoding["attention_mask"],
        label_to_tokens={label: [row] for row, label in enumerate(labels)},
        char_spans=spans,
    )


def chunk_classes(
    class_names: Sequence[str],
    encode: Callable[[list[str], list[int]], EncodedPrompt],
    labels: Sequence[int] | None = None,
    max_classes_per_chunk: int | None = None,
) -> list[EncodedPrompt]:
    """Consecutive prompts that each fit, in class order, each class keeping its global label.

    The rule of GLIP's captions (``adapt.prompt.chunk_classes``): ``encode(names, labels)`` raises
    ``PromptTooLongError`` where the next class would not fit.
    """
    class_names = list(class_names)
    labels = _labels(class_names, labels)
    if not class_names:
        raise ValueError("no classes to encode")
    return chunk_prompts(
        len(class_names), lambda a, b: encode(class_names[a:b], labels[a:b]), max_classes_per_chunk
    )
