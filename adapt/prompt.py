"""Captions, tokenisation and the class <-> token maps that GLIP grounds detections on.

GLIP turns detection into phrase grounding: the class names are joined into one caption, BERT reads
it, and a class is scored through the word pieces of its name. Everything here reproduces the
official caption and token bookkeeping (``create_queries_and_maps`` / ``create_positive_dict`` at
test time, ``create_positive_map`` + ``BatchCollator`` in training) so that a checkpoint sees the
very token positions it was trained with. The one deliberate departure: a caption that does not fit
into ``max_query_len`` tokens raises :class:`PromptTooLongError` where the official code silently
truncates it (and then scores classes on tokens the model never saw).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.resources import as_file, files
from pathlib import Path

import torch
from torch import Tensor
from transformers import BatchEncoding, BertTokenizer, PreTrainedTokenizerFast

__all__ = [
    "CaptionPrompt",
    "EncodedPrompt",
    "PromptTooLongError",
    "build_caption",
    "clean_name",
    "encode_prompt",
    "encode_prompt_chunks",
    "load_tokenizer",
    "positive_map",
]

# Official DATASETS.SEPARATION_TOKENS of the GLIP pre-training yamls (the code default is " ").
SEPARATOR = ". "
MAX_QUERY_LEN = 256


@dataclass(frozen=True)
class CaptionPrompt:
    """Manual prompt of one class (official ``DATASETS.CAPTION_PROMPT`` entry, paper Table 10).

    ``prefix`` and ``suffix`` are context: their tokens are in the caption but are not the class's
    positive tokens, so they count as negatives in the loss and are ignored by the class score.
    ``name`` replaces the class name; ``None`` keeps the (cleaned) class name.
    """

    prefix: str = ""
    name: str | None = None
    suffix: str = ""


class PromptTooLongError(ValueError):
    """The caption needs more than ``max_query_len`` tokens.

    The official code truncates silently, which drops the trailing classes from the text the model
    reads while still scoring them on positions it never saw. Split the classes instead
    (:func:`encode_prompt_chunks`).
    """

    def __init__(self, classes: Sequence[str], n_tokens: int, max_query_len: int) -> None:
        self.classes = list(classes)
        self.n_tokens = n_tokens
        self.max_query_len = max_query_len
        super().__init__(
            f"prompt needs {n_tokens} tokens ([CLS] and [SEP] included) but max_query_len is "
            f"{max_query_len}; classes that do not fit: {self.classes}. "
            "Use encode_prompt_chunks() to split the class list."
        )


def clean_name(name: str) -> str:
    """Official ``clean_name``: drop "(...)", "_" -> " ", one pass of "  " -> " ".

    Reproduced literally, quirks included: the parenthesis pattern is greedy (everything between
    the first "(" and the last ")" goes), nothing is stripped (so "bottle (glass)" keeps a
    trailing space), and three spaces become two.
    """
    name = re.sub(r"\(.*\)", "", name)
    name = re.sub(r"_", " ", name)
    name = re.sub(r"  ", " ", name)
    return name


def build_caption(
    class_names: Sequence[str],
    caption_prompts: Sequence[CaptionPrompt | None] | None = None,
    separator: str = SEPARATOR,
) -> tuple[str, list[tuple[int, int]]]:
    """The evaluation caption and the ``[start, end)`` character span of each class's name.

    Follows the official test-time ``create_queries_and_maps``: entries are
    ``prefix + name + suffix`` joined by ``separator`` with no trailing separator, and the span
    covers the name only. Official quirk kept: a prompt's ``name`` is used verbatim, while a plain
    class name goes through :func:`clean_name`. Official *training*
    (``convert_od_to_grounding_simple``) also cleans the prompt's ``name``; the two differ only for
    prompt names containing "(", "_" or double spaces, which none of the paper's prompts do.
    """
    if caption_prompts is not None and len(caption_prompts) != len(class_names):
        raise ValueError(f"{len(caption_prompts)} caption prompts for {len(class_names)} classes")
    caption = ""
    spans: list[tuple[int, int]] = []
    for i, raw_name in enumerate(class_names):
        prompt = caption_prompts[i] if caption_prompts is not None else None
        if prompt is None:
            prompt = CaptionPrompt()
        name = prompt.name if prompt.name is not None else clean_name(raw_name)
        caption += prompt.prefix
        start = len(caption)
        caption += name
        spans.append((start, len(caption)))
        caption += prompt.suffix
        if i != len(class_names) - 1:
            caption += separator
    return caption, spans


# The tokenizers adapt ships (adapt/resources/<name>); any other tokenizer is a folder the user names.
PACKAGED_TOKENIZERS = ("bert-base-uncased",)


@lru_cache(maxsize=4)
def load_tokenizer(name: str = "bert-base-uncased") -> PreTrainedTokenizerFast:
    """The WordPiece tokenizer GLIP uses, from the vocabulary shipped with adapt (never the network).

    ``name`` is "bert-base-uncased" (the packaged vocabulary) or a local tokenizer folder. Cached:
    every dataset, model and prompt shares one instance.
    """
    if name in PACKAGED_TOKENIZERS:
        with as_file(files("adapt").joinpath("resources", name)) as path:
            return BertTokenizer.from_pretrained(str(path), local_files_only=True)
    if Path(name).is_dir():
        return BertTokenizer.from_pretrained(name, local_files_only=True)
    raise ValueError(
        f"unknown tokenizer {name!r}: expected 'bert-base-uncased' (shipped in adapt/resources) "
        "or a local tokenizer folder"
    )


def span_to_tokens(encoding: BatchEncoding, start: int, end: int) -> list[int]:
    """Token positions of the character span ``[start, end)``; empty when it cannot be mapped.

    Official fallbacks of ``create_positive_dict`` / ``create_positive_map``: a span boundary that
    lands on a character without a token (a space) is retried one and two characters inwards;
    out-of-range characters count as "no token". All tokens between the two ends are included.
    """

    def char_to_token(i: int) -> int | None:
        try:
            return encoding.char_to_token(i)
        except Exception:  # official: `except: pos = None` (index past the end of the text)
            return None

    begin = char_to_token(start)
    if begin is None:
        begin = char_to_token(start + 1)
        if begin is None:
            begin = char_to_token(start + 2)
    last = char_to_token(end - 1)
    if last is None:
        last = char_to_token(end - 2)
        if last is None:
            last = char_to_token(end - 3)
    if begin is None or last is None:
        return []
    return list(range(begin, last + 1))


@dataclass
class EncodedPrompt:
    """One tokenised caption and which tokens ground which class.

    ``labels`` are the 1-based (global) labels of ``class_names``; ``label_to_tokens`` is the
    official ``positive_map_label_to_token`` (label -> token positions in the padded sequence).
    A class whose span cannot be mapped to tokens is absent from it, as in the official code.
    """

    caption: str
    class_names: list[str]
    labels: list[int]
    input_ids: Tensor  # [L] int64, L = max_query_len
    attention_mask: Tensor  # [L] int64
    label_to_tokens: dict[int, list[int]]
    char_spans: list[tuple[int, int]] = field(default_factory=list)  # per class, [start, end)

    @property
    def max_query_len(self) -> int:
        return int(self.input_ids.shape[0])

    def positive_map(self, labels: Tensor | Sequence[int], normalize: bool = False) -> Tensor:
        """Training positive map of boxes with these labels (see :func:`positive_map`)."""
        return positive_map(self.label_to_tokens, labels, self.max_query_len, normalize=normalize)


def _entry_char_ends(
    class_names: Sequence[str],
    caption_prompts: Sequence[CaptionPrompt | None] | None,
    spans: Sequence[tuple[int, int]],
) -> list[int]:
    """End character of each class's whole entry (name + suffix), to tell which classes overflow."""
    ends = []
    for i, (_, name_end) in enumerate(spans):
        prompt = caption_prompts[i] if caption_prompts is not None else None
        ends.append(name_end + len(prompt.suffix if prompt is not None else ""))
    return ends


def encode_prompt(
    class_names: Sequence[str],
    tokenizer: PreTrainedTokenizerFast,
    caption_prompts: Sequence[CaptionPrompt | None] | None = None,
    labels: Sequence[int] | None = None,
    max_query_len: int = MAX_QUERY_LEN,
) -> EncodedPrompt:
    """Caption, padded token ids and label -> tokens map for a list of classes.

    Tokenised like the official language backbone (``padding="max_length"``, ``max_length=256``),
    so ids and positions are exactly what the checkpoint saw. ``labels`` default to 1..K.

    Raises:
        PromptTooLongError: the caption needs more than ``max_query_len`` tokens.
    """
    class_names = list(class_names)
    labels = list(range(1, len(class_names) + 1)) if labels is None else [int(x) for x in labels]
    if len(labels) != len(class_names):
        raise ValueError(f"{len(labels)} labels for {len(class_names)} classes")
    caption, spans = build_caption(class_names, caption_prompts)

    # Tokenise once without truncation to see whether everything fits ([CLS] + pieces + [SEP]).
    full = tokenizer(caption, add_special_tokens=True, truncation=False)
    n_tokens = len(full["input_ids"])
    if n_tokens > max_query_len:
        ends = _entry_char_ends(class_names, caption_prompts, spans)
        # The last content position is max_query_len - 2 (the final slot holds [SEP]).
        overflow = [
            name
            for name, end in zip(class_names, ends, strict=True)
            if (span_to_tokens(full, end - 1, end) or [max_query_len])[-1] > max_query_len - 2
        ]
        raise PromptTooLongError(overflow or class_names[-1:], n_tokens, max_query_len)

    return encode_caption(caption, spans, class_names, tokenizer, labels, max_query_len)


def encode_caption(
    caption: str,
    spans: Sequence[tuple[int, int]],
    names: Sequence[str],
    tokenizer: PreTrainedTokenizerFast,
    labels: Sequence[int] | None = None,
    max_query_len: int = MAX_QUERY_LEN,
) -> EncodedPrompt:
    """Tokenise a caption whose phrase ``spans`` (character ``[start, end)``) are the classes.

    Shared by class-list prompts and free-form captions with marked phrases (phrase grounding).
    The caller has checked that the caption fits; labels default to 1..K.
    """
    labels = list(range(1, len(names) + 1)) if labels is None else [int(x) for x in labels]
    encoding = tokenizer(
        caption, max_length=max_query_len, padding="max_length", truncation=True, return_tensors="pt"
    )
    label_to_tokens: dict[int, list[int]] = {}
    for label, (start, end) in zip(labels, spans, strict=True):
        tokens = span_to_tokens(encoding, start, end)
        if tokens:  # official: a span that maps to no token is skipped
            label_to_tokens.setdefault(label, []).extend(tokens)
    return EncodedPrompt(
        caption=caption,
        class_names=list(names),
        labels=labels,
        input_ids=encoding["input_ids"][0],
        attention_mask=encoding["attention_mask"][0],
        label_to_tokens=label_to_tokens,
        char_spans=list(spans),
    )


def encode_prompt_chunks(
    class_names: Sequence[str],
    tokenizer: PreTrainedTokenizerFast,
    caption_prompts: Sequence[CaptionPrompt | None] | None = None,
    labels: Sequence[int] | None = None,
    max_query_len: int = MAX_QUERY_LEN,
    max_classes_per_chunk: int | None = None,
) -> list[EncodedPrompt]:
    """Split a long class list into consecutive prompts that each fit ``max_query_len``.

    GLIP evaluates large vocabularies (LVIS) this way: one forward pass per chunk of classes, each
    chunk keeping the classes' global labels so detections of all chunks can be merged.
    ``max_classes_per_chunk`` reproduces the official fixed chunk size (40 for LVIS); chunks are
    also cut earlier wherever the next class would not fit. Class order is kept.
    """
    class_names = list(class_names)
    labels = list(range(1, len(class_names) + 1)) if labels is None else [int(x) for x in labels]
    if len(labels) != len(class_names):
        raise ValueError(f"{len(labels)} labels for {len(class_names)} classes")
    prompts = list(caption_prompts) if caption_prompts is not None else [None] * len(class_names)
    if len(prompts) != len(class_names):
        raise ValueError(f"{len(prompts)} caption prompts for {len(class_names)} classes")

    return chunk_classes(
        len(class_names),
        lambda a, b: encode_prompt(class_names[a:b], tokenizer, prompts[a:b], labels[a:b], max_query_len),
        max_classes_per_chunk,
    )


def chunk_classes(
    num_classes: int,
    encode: Callable[[int, int], EncodedPrompt],
    max_classes_per_chunk: int | None = None,
) -> list[EncodedPrompt]:
    """Consecutive prompts that each fit, in class order: ``encode(a, b)`` is the prompt of
    classes ``a..b-1`` (each keeping its global label), or raises :class:`PromptTooLongError`.

    Grow a chunk one class at a time (tokenising is cheap next to a forward pass) until the next
    class would not fit or the chunk holds ``max_classes_per_chunk`` classes; a single class that
    does not fit alone is an error. GLIP's captions and the detector families'
    (``adapt.families.captions``) share this rule.
    """
    chunks: list[EncodedPrompt] = []
    start = 0
    while start < num_classes:
        encoded: EncodedPrompt | None = None
        stop = start
        while stop < num_classes and (max_classes_per_chunk is None or stop - start < max_classes_per_chunk):
            try:
                candidate = encode(start, stop + 1)
            except PromptTooLongError:
                if stop == start:  # a single class that does not fit on its own
                    raise
                break
            encoded, stop = candidate, stop + 1
        assert encoded is not None
        chunks.append(encoded)
        start = stop
    return chunks


def positive_map(
    label_to_tokens: dict[int, list[int]],
    labels: Tensor | Sequence[int],
    length: int = MAX_QUERY_LEN,
    normalize: bool = False,
) -> Tensor:
    """Per-box token targets: row i marks the tokens of ``labels[i]``, shape [n, length] float32.

    Binary by default, because that is what official training feeds the loss: the dataset builds
    rows normalised to sum 1 (``create_positive_map``: 1 / (n_tokens + 1e-6)) and ``BatchCollator``
    stores them in a bool tensor and back to float, i.e. binarises them. ``normalize=True`` gives
    the pre-collation rows (reference only).
    """
    labels = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
    out = torch.zeros(len(labels), length, dtype=torch.float32)
    for i, label in enumerate(labels.tolist()):
        tokens = label_to_tokens.get(label, [])
        if tokens:
            out[i, tokens] = 1.0
    if normalize:
        # Official create_positive_map: float32 division by (row sum + 1e-6).
        out = out / (out.sum(-1)[:, None] + 1e-6)
    return out
