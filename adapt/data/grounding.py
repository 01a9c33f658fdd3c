"""Phrase-grounding samples: a caption, its annotated phrases, and the boxes each phrase names.

GLIP learned detection as grounding (from MDETR): the model reads a free caption and every
annotated phrase gets its boxes. Two file formats carry such data (`adapt.data.flickr` reads the
Flickr30k Entities release, `adapt.data.mdetr` MDETR's pre-processed COCO-style files); both are
read into the one sample type defined here, so training, prediction and the metric never care where
a sample came from.

A sample keeps two views of its boxes because training and evaluation need different ones:

* ``phrases``: every annotated phrase in caption order, each with *all* ground-truth boxes of what
  it names. The metric ranks boxes per phrase and compares them with these (phrases without a box,
  `nobndbox` and most `scene` phrases, are dropped there: :attr:`GroundingSample.eval_phrases`).
* ``boxes`` / ``box_spans``: the training boxes, each with the character spans of every phrase that
  names it (MDETR's ``tokens_positive``); a box named by two phrases is one target whose positive
  map covers both, rather than two conflicting targets on one object.

Boxes are xyxy in the annotation file's pixel coordinates with the continuous convention
(``x2 = x + w``, Flickr's ``xmax``), which is what the metric compares against. Converting them to
the model's +1-convention targets (``x2 = x + w - 1``, `adapt.data.coco.xywh_to_xyxy`) is the
training dataset's job, so that a perfect prediction written back (+1 undone) scores IoU 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor
from transformers import PreTrainedTokenizerFast

from adapt.data.errors import DataError
from adapt.prompt import MAX_QUERY_LEN, encode_caption, positive_map

__all__ = [
    "Box",
    "CaptionTooLongError",
    "EncodedGrounding",
    "GroundingSample",
    "Phrase",
    "Span",
    "encode_grounding",
    "require_image_dir",
    "require_images",
]

Box = tuple[float, float, float, float]
Span = tuple[int, int]


@dataclass(frozen=True)
class Phrase:
    """One annotated phrase: where it is in the caption and which boxes it names.

    ``spans`` are character ``[start, end)`` ranges (one for Flickr phrases; MDETR's
    ``tokens_positive_eval`` allows several). ``phrase_id`` is the Flickr coreference chain id (two
    phrases naming the same entity share it; "0" is Flickr's non-visual chain) or, for MDETR files,
    the phrase's position. ``types`` are Flickr's coarse categories (people, clothing, ...; several
    for some phrases), empty where the format has none.
    """

    text: str
    spans: tuple[Span, ...]
    phrase_id: str
    types: tuple[str, ...]
    boxes: tuple[Box, ...]


@dataclass(frozen=True)
class GroundingSample:
    """One (image, caption) pair; see the module docstring for the two views of its boxes.

    ``image_id`` and ``sentence_id`` identify the caption the way MDETR's Flickr predictions do
    (the Flickr image id and the caption's index in its Sentences file); ``entry_id`` is the id of
    the entry in an MDETR-format file (RefCOCO predictions are keyed by it), None for Flickr files.
    ``size`` is (width, height) as the annotation records it; ``dataset`` MDETR's ``dataset_name``.
    """

    image_id: str
    sentence_id: int
    file_name: str
    caption: str
    phrases: tuple[Phrase, ...]
    boxes: tuple[Box, ...]
    box_spans: tuple[tuple[Span, ...], ...]
    size: tuple[int, int] | None = None
    entry_id: int | str | None = None
    dataset: str | None = None

    @property
    def eval_phrases(self) -> tuple[Phrase, ...]:
        """The phrases the metric scores: those with at least one box (MDETR's filter)."""
        return tuple(p for p in self.phrases if p.boxes)


class CaptionTooLongError(DataError):
    """A caption needs more tokens than the model reads.

    Detection refuses an over-long prompt instead of truncating it (`adapt.prompt.PromptTooLongError`);
    a caption cannot be split into chunks the way a class list can, because its phrases mean what
    they mean in the whole sentence, so it is refused with the sample named.
    """


@dataclass
class EncodedGrounding:
    """A sample's caption as the model reads it, and its phrases and boxes as token positions.

    ``phrase_tokens[i]`` are the token positions of ``sample.eval_phrases[i]`` (empty where a span
    maps to no token: the prediction then has no score for it); ``positive_map`` [n_boxes, L] is
    the binary token target of each training box (the official collator binarises the map).
    """

    input_ids: Tensor  # [L] int64
    attention_mask: Tensor  # [L] int64
    phrase_tokens: list[list[int]]
    positive_map: Tensor  # [len(sample.boxes), L] float32 0/1


def encode_grounding(
    sample: GroundingSample, tokenizer: PreTrainedTokenizerFast, max_query_len: int = MAX_QUERY_LEN
) -> EncodedGrounding:
    """Tokenise the caption and map phrase spans and box spans to tokens, as GLIP builds them.

    Every span goes through `adapt.prompt`'s character-to-token rule (the official
    ``create_positive_map`` fallbacks, identical in MDETR's), with one tokenisation of the caption.

    Raises:
        CaptionTooLongError: the caption needs more than ``max_query_len`` tokens.
    """
    n_tokens = len(tokenizer(sample.caption, add_special_tokens=True, truncation=False)["input_ids"])
    if n_tokens > max_query_len:
        raise CaptionTooLongError(
            f"caption {sample.sentence_id} of image {sample.image_id} needs {n_tokens} tokens "
            f"([CLS] and [SEP] included) but max_query_len is {max_query_len}: {sample.caption[:80]!r}"
        )
    spans = sorted({span for p in sample.eval_phrases for span in p.spans} | _box_span_set(sample))
    label_of = {span: i + 1 for i, span in enumerate(spans)}
    encoded = encode_caption(
        sample.caption,
        spans,
        [sample.caption[a:b] for a, b in spans],
        tokenizer,
        labels=list(label_of.values()),
        max_query_len=max_query_len,
    )

    def tokens_of(span_list: Sequence[Span]) -> list[int]:
        found = {t for span in span_list for t in encoded.label_to_tokens.get(label_of[span], [])}
        return sorted(found)

    phrase_tokens = [tokens_of(p.spans) for p in sample.eval_phrases]
    box_tokens = {i + 1: tokens_of(spans_of_box) for i, spans_of_box in enumerate(sample.box_spans)}
    rows = positive_map(box_tokens, list(box_tokens), max_query_len)
    return EncodedGrounding(
        input_ids=encoded.input_ids,
        attention_mask=encoded.attention_mask,
        phrase_tokens=phrase_tokens,
        positive_map=rows,
    )


def _box_span_set(sample: GroundingSample) -> set[Span]:
    return {span for spans in sample.box_spans for span in spans}


def require_image_dir(image_dir: str | Path, how_to_get: str) -> Path:
    """The configured image folder, or a DataError saying in one sentence how to get the images.

    Grounding images are never downloaded by adapt (Flickr30k's come under the dataset's own terms
    of use), so a missing folder is the user's next step, not a bug.
    """
    path = Path(image_dir).expanduser()
    if not path.is_dir():
        raise DataError(f"image folder {path} not found: {how_to_get}")
    return path


def require_images(samples: Sequence[GroundingSample], image_dir: Path, source: str) -> None:
    """Fail now, naming the first missing files, when images of ``samples`` are not in ``image_dir``."""
    names = sorted({s.file_name for s in samples})
    missing = [n for n in names if not (image_dir / n).is_file()]
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise DataError(f"{source}: {len(missing)} of {len(names)} images missing under {image_dir}: {shown}")
