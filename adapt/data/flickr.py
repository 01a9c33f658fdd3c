"""The Flickr30k Entities release read into grounding samples (`adapt.data.grounding`).

The release (github.com/BryanPlummer/flickr30k_entities, ``annotations.zip``) has, per image id:

* ``Sentences/<id>.txt``: one caption a line, phrases marked ``[/EN#<chain id>/<type>[/<type>...]
  word ... word]``. Phrases of one coreference chain share the id; chain "0" is "notvisual".
* ``Annotations/<id>.xml``: PASCAL-VOC-like ``<object>`` elements, each with one or more ``<name>``
  (chain ids) and either a ``<bndbox>`` (``xmin ymin xmax ymax``) or the ``<nobndbox>`` / ``<scene>``
  flags; ``<size>`` gives the image's width and height.
* ``train.txt`` / ``val.txt`` / ``test.txt``: the image ids of each split.

Parsing follows the rules of the release's own Python utilities as MDETR uses them (facts checked
against MDETR's ``flickr_eval.py`` and ``flickr_combined.py``): the caption is the words joined by
single spaces with the markup removed, a phrase's span starts at its first word, a sentence's id is
its index among the non-empty lines, a chain's boxes are every ``bndbox`` whose object names it.
Training boxes follow MDETR's conversion: within a sentence, boxes of the mentioned chains that
overlap with IoU >= 0.95 are one target (the last of them), named by every phrase of those chains.

The images are not part of the release (:data:`IMAGES_HELP`).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou

from adapt.data.errors import DataError
from adapt.data.grounding import Box, GroundingSample, Phrase, Span

__all__ = [
    "ANNOTATIONS_HELP",
    "IMAGES_HELP",
    "PHRASE_TYPES",
    "SPLITS",
    "FlickrImage",
    "Sentence",
    "SentencePhrase",
    "flickr_samples",
    "image_samples",
    "parse_sentence",
    "read_annotation",
    "read_sentences",
    "read_split",
    "require_flickr_root",
]

SPLITS = ("train", "val", "test")
# The coarse phrase types of the paper's per-type table (Flickr30k Entities, Plummer et al.), in its
# column order; "notvisual" phrases (chain 0) never have boxes, so they never reach the metric.
PHRASE_TYPES = ("people", "clothing", "bodyparts", "animals", "vehicles", "instruments", "scene", "other")
ANNOTATIONS_HELP = (
    "download annotations.zip of the Flickr30k Entities release (github.com/BryanPlummer/flickr30k_entities) "
    "and point the root at the folder holding Annotations/, Sentences/ and train.txt, val.txt, test.txt"
)
IMAGES_HELP = (
    "the Flickr30k images are not redistributed with Flickr30k Entities; request them through the form on "
    "the Flickr30K webpage (shannon.cs.illinois.edu/DenotationGraph), under its terms (Flickr Terms of Use, "
    "non-commercial research and education), and set the image folder to where flickr30k-images/ is unpacked"
)
# Same-object boxes within a sentence, as MDETR's conversion groups them.
EQUIVALENT_IOU = 0.95

_OPENING = re.compile(r"\[/EN#(\d+)((?:/[^/\s]+)+)")
_IMAGE_ID = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class SentencePhrase:
    """A marked phrase of a caption: its words, ``[start, end)`` span, chain id and types."""

    text: str
    span: Span
    first_word: int
    phrase_id: str
    types: tuple[str, ...]


@dataclass(frozen=True)
class Sentence:
    caption: str
    phrases: tuple[SentencePhrase, ...]


@dataclass
class FlickrImage:
    """One ``Annotations/<id>.xml``: boxes per chain id, and the chains flagged no-box or scene."""

    width: int
    height: int
    file_name: str | None
    boxes: dict[str, list[Box]] = field(default_factory=dict)
    no_box: set[str] = field(default_factory=set)
    scene: set[str] = field(default_factory=set)


def parse_sentence(line: str, where: str) -> Sentence:
    """One caption line -> the plain caption and its phrases; ``where`` names file and line in errors."""
    words: list[str] = []
    phrases: list[SentencePhrase] = []
    current: tuple[str, tuple[str, ...], int, list[str]] | None = None  # id, types, first word, words
    for token in line.split():
        if current is not None:
            closing = token.endswith("]")
            word = token[:-1] if closing else token
            current[3].append(word)
            words.append(word)
            if closing:
                phrase_id, types, first, phrase_words = current
                text = " ".join(phrase_words)
                start = sum(len(w) for w in words[:first]) + first
                phrases.append(SentencePhrase(text, (start, start + len(text)), first, phrase_id, types))
                current = None
        elif token.startswith("["):
            match = _OPENING.fullmatch(token)
            if match is None:
                raise DataError(f"{where}: {token!r} opens a phrase but is not of the form [/EN#<id>/<type>")
            current = (match.group(1), tuple(match.group(2)[1:].split("/")), len(words), [])
        else:
            words.append(token)
    if current is not None:
        raise DataError(f"{where}: the phrase [/EN#{current[0]}/... is not closed with ']'")
    return Sentence(" ".join(words), tuple(phrases))


def read_sentences(path: Path) -> list[Sentence]:
    """Every caption of a ``Sentences/<id>.txt``; empty lines are skipped and do not count as ids."""
    text = _read_text(path)
    out = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if line:
            out.append(parse_sentence(line, f"{path}, line {number}"))
    return out


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read file ({exc})") from exc


def _int_text(element: ET.Element | None, path: Path, what: str) -> int:
    text = (element.text or "").strip() if element is not None else ""
    try:
        return int(float(text))
    except ValueError:
        raise DataError(f"{path}: {what} is {text!r}, not a number") from None


def read_annotation(path: Path) -> FlickrImage:
    """Parse one ``Annotations/<id>.xml``; a malformed file is one DataError naming the element."""
    try:
        root = ET.fromstring(_read_text(path))
    except ET.ParseError as exc:
        raise DataError(f"{path}: not valid XML ({exc})") from exc
    size = root.find("size")
    if size is None:
        raise DataError(f"{path}: no <size> element")
    image = FlickrImage(
        width=_int_text(size.find("width"), path, "<size><width>"),
        height=_int_text(size.find("height"), path, "<size><height>"),
        file_name=(root.findtext("filename") or "").strip() or None,
    )
    for number, obj in enumerate(root.findall("object"), start=1):
        names = [(n.text or "").strip() for n in obj.findall("name")]
        if not names or not all(n.isdigit() for n in names):
            raise DataError(f"{path}: <object> number {number} has <name> {names!r}; expected chain ids")
        box_element = obj.find("bndbox")
        if box_element is not None:
            what = f"<object> number {number} <bndbox>"
            x1, y1, x2, y2 = (
                _int_text(box_element.find(key), path, f"{what} <{key}>")
                for key in ("xmin", "ymin", "xmax", "ymax")
            )
            if x2 < x1 or y2 < y1:
                raise DataError(f"{path}: {what} has xmax < xmin or ymax < ymin: {[x1, y1, x2, y2]}")
            for name in names:
                image.boxes.setdefault(name, []).append((float(x1), float(y1), float(x2), float(y2)))
            continue
        flags = {key: obj.find(key) for key in ("nobndbox", "scene")}
        if all(element is None for element in flags.values()):
            raise DataError(f"{path}: <object> number {number} has neither <bndbox> nor <nobndbox>/<scene>")
        for key, element in flags.items():
            if element is not None and _int_text(element, path, f"<object> number {number} <{key}>") > 0:
                (image.no_box if key == "nobndbox" else image.scene).update(names)
    return image


def read_split(root: Path, split: str) -> list[str]:
    """Image ids of ``<root>/<split>.txt``; every id must be a plain file stem (it becomes a path)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = root / f"{split}.txt"
    ids = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        image_id = line.strip()
        if not image_id:
            continue
        if not _IMAGE_ID.fullmatch(image_id):
            raise DataError(
                f"{path}, line {number}: {image_id[:60]!r} is not an image id (letters, digits, _ -)"
            )
        ids.append(image_id)
    return ids


def require_flickr_root(root: str | Path) -> Path:
    """The release folder, or one sentence on how to get it."""
    path = Path(root).expanduser()
    if not (path / "Annotations").is_dir() or not (path / "Sentences").is_dir():
        raise DataError(f"Flickr30k Entities annotations not found at {path}: {ANNOTATIONS_HELP}")
    return path


def flickr_samples(root: str | Path, split: str, merge_boxes: bool = False) -> list[GroundingSample]:
    """Every caption of every image of ``split``, in split-file then sentence order.

    ``merge_boxes`` makes each chain's training target the union of its boxes (MDETR's "mergedGT"
    files, for the merged-box protocol); the phrases keep their separate boxes either way, since the
    metric merges them itself.
    """
    root = require_flickr_root(root)
    return [s for image_id in read_split(root, split) for s in image_samples(root, image_id, merge_boxes)]


def image_samples(root: Path, image_id: str, merge_boxes: bool = False) -> list[GroundingSample]:
    """The captions of one image of the release, in sentence order.

    One image at a time, so that a few-shot run reads the annotations of the images it samples
    rather than the ~30,000 of the training split.
    """
    image = read_annotation(root / "Annotations" / f"{image_id}.xml")
    sentences = read_sentences(root / "Sentences" / f"{image_id}.txt")
    return [_sample(image_id, i, sentence, image, merge_boxes) for i, sentence in enumerate(sentences)]


def _sample(
    image_id: str, sentence_id: int, sentence: Sentence, image: FlickrImage, merge_boxes: bool
) -> GroundingSample:
    phrases = tuple(
        Phrase(p.text, (p.span,), p.phrase_id, p.types, tuple(image.boxes.get(p.phrase_id, ())))
        for p in sentence.phrases
    )
    boxes, box_spans = training_boxes(sentence.phrases, image.boxes, merge_boxes)
    return GroundingSample(
        image_id=image_id,
        sentence_id=sentence_id,
        file_name=image.file_name or f"{image_id}.jpg",
        caption=sentence.caption,
        phrases=phrases,
        boxes=tuple(boxes),
        box_spans=tuple(box_spans),
        size=(image.width, image.height),
        dataset="flickr",
    )


def training_boxes(
    phrases: Sequence[SentencePhrase], chain_boxes: dict[str, list[Box]], merge_boxes: bool = False
) -> tuple[list[Box], list[tuple[Span, ...]]]:
    """One sentence's training targets: boxes and the spans that name each (MDETR's conversion).

    Every mention contributes its chain's boxes (a chain mentioned twice, twice); boxes linked by
    IoU >= 0.95 form one target, taken as the group's last box and named by all phrases of every
    chain in the group. Groups come in the order of their first box.
    """
    if merge_boxes:
        chain_boxes = {k: [_enclosing(v)] for k, v in chain_boxes.items() if v}
    entries = [(p.phrase_id, box) for p in phrases for box in chain_boxes.get(p.phrase_id, ())]
    if not entries:
        return [], []
    coords = torch.tensor([box for _, box in entries], dtype=torch.float64)
    linked = (box_iou(coords, coords) >= EQUIVALENT_IOU).tolist()  # continuous IoU, as MDETR's
    leader = list(range(len(entries)))  # union-find; a group is named by its first member

    def find(i: int) -> int:
        while leader[i] != i:
            i = leader[i]
        return i

    for i in range(len(entries)):
        for j in range(i):
            if linked[i][j]:
                a, b = find(i), find(j)
                leader[max(a, b)] = min(a, b)
    groups: dict[int, list[int]] = {}
    for i in range(len(entries)):
        groups.setdefault(find(i), []).append(i)
    boxes, spans = [], []
    for members in groups.values():
        chains = {entries[i][0] for i in members}
        boxes.append(entries[members[-1]][1])
        spans.append(tuple(sorted({p.span for p in phrases if p.phrase_id in chains})))
    return boxes, spans


def _enclosing(boxes: Sequence[Box]) -> Box:
    a = np.asarray(boxes, dtype=np.float64)
    return (float(a[:, 0].min()), float(a[:, 1].min()), float(a[:, 2].max()), float(a[:, 3].max()))
