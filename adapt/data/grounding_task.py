"""A phrase-grounding task: captions with phrase boxes as a training and evaluation set.

`build_task` turns a `conf/task/**.yaml` with ``type: grounding`` into a :class:`GroundingTask`
(detection tasks stay `adapt.data.task.Task`). Its ``dataset(split, shots, seed)`` plays the part
of a detection split, with what grounding changes:

* a sample is one (image, caption) pair, not one image: the caption is the sample's own text, so
  the target carries its tokens (``input_ids``, ``attention_mask``), a positive map per box over
  them and the token positions of the phrases the metric scores (``phrase_tokens``);
* ``shots=K`` is K images with all their captions (there are no classes to count shots per), drawn
  with the run's seed; the test split is always whole, and val is K images too, as for detection;
* no horizontal flip: captions say "left" and "right", and a flipped image would contradict them;
* a caption longer than the text limit is skipped in training (a warning counts them) and refused
  at evaluation, where skipping it would change the metric's denominator. Detection refuses an
  over-long prompt the same way; a caption cannot be cut into chunks as a class list can, because
  its phrases mean what they mean in the whole sentence.

Two file formats (`adapt.data.flickr`, `adapt.data.mdetr`) read into the same samples. The images
stay where the user has them: a missing folder is one sentence on how to get the data.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torchvision.transforms.functional as F
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerFast

from adapt.data import flickr, mdetr
from adapt.data.errors import DataError, DataWarning
from adapt.data.grounding import (
    CaptionTooLongError,
    EncodedGrounding,
    GroundingSample,
    encode_grounding,
    require_image_dir,
    require_images,
)
from adapt.data.io import read_image
from adapt.data.transforms import Compose, RandomHorizontalFlip, build_transforms, clip_boxes
from adapt.grid import normalize_shots
from adapt.prompt import MAX_QUERY_LEN, load_tokenizer

log = logging.getLogger(__name__)

__all__ = [
    "FORMATS",
    "GROUNDING",
    "METRICS",
    "GroundingDataset",
    "GroundingTask",
    "build_grounding_task",
    "is_grounding_config",
    "without_flip",
]

GROUNDING = "grounding"
SPLITS = ("train", "val", "test")
FORMATS = ("flickr", "mdetr")
# The metric of a task and the key the protocol selects on by default: Flickr30k Entities recall
# (adapt.metrics.grounding) or RefCOCO precision (adapt.metrics.refexp).
METRICS = {"flickr": "any_box.R@1", "refexp": "P@1"}
_METRIC_KEYS = {
    "flickr": re.compile(r"(any_box|merged_box)\.(R@\d+|upper_bound)"),
    "refexp": re.compile(r"P@\d+"),
}
# Where the images of each source come from, and under which terms (one sentence each).
IMAGE_SOURCES = {"flickr30k": flickr.IMAGES_HELP, "coco2014": mdetr.COCO_IMAGES_HELP}


def is_grounding_config(cfg: Mapping[str, Any]) -> bool:
    """Whether a task config (``cfg.task``) is a grounding task (``type: grounding``)."""
    return str(cfg.get("type") or "detection") == GROUNDING


def without_flip(transforms: Any) -> Any:
    """``transforms`` minus any horizontal flip: a caption's "left" must stay on the left."""
    if isinstance(transforms, Compose):
        return Compose([t for t in transforms.transforms if not isinstance(t, RandomHorizontalFlip)])
    if isinstance(transforms, RandomHorizontalFlip):
        raise ValueError("grounding data is never flipped: captions say left and right")
    return transforms


@dataclass
class GroundingTask:
    """Where a grounding dataset is, how it is scored, and its splits (module docstring)."""

    id: str
    name: str
    format: str
    data_root: Path
    image_dirs: dict[str, Path]
    files: dict[str, Path | None]
    metric: str = "flickr"
    val_metric: str = METRICS["flickr"]
    max_boxes: int = 100
    merge_boxes: bool = False
    images_help: str = flickr.IMAGES_HELP
    _cache: dict[str, dict[str, list[GroundingSample]]] = field(
        default_factory=dict, repr=False, compare=False
    )

    type: ClassVar[str] = GROUNDING

    def check_files(self) -> None:
        """Fail now, in one sentence on how to get them, when the annotations or images are missing."""
        if self.format == "flickr":
            flickr.require_flickr_root(self.data_root)
        else:
            for path in sorted({p for p in self.files.values() if p is not None}):
                if not path.is_file():
                    raise DataError(f"{path} not found: {mdetr.ANNOTATIONS_HELP}")
        for image_dir in sorted(set(self.image_dirs.values())):
            require_image_dir(image_dir, self.images_help)

    def split_source(self, split: str, shots: int | str = "all", seed: int | None = None) -> str:
        """One line saying which file (and which sampling) a split comes from, for logs and errors."""
        source = str(self._source_file(split))
        if split == "test" or normalize_shots(shots) in ("all", 0):
            return source
        return f"{source} sampled to {shots} images with seed {seed}"

    def _source_file(self, split: str) -> Path:
        if self.format == "flickr":
            return self.data_root / f"{split}.txt"
        path = self.files[split]
        if path is None:
            raise DataError(f"task {self.id}: no {split} annotation file configured (task.{split}_json)")
        return path

    def image_keys(self, split: str) -> list[str]:
        """The split's images in file order: Flickr image ids, or the file names of an MDETR file."""
        if self.format == "flickr":
            return flickr.read_split(flickr.require_flickr_root(self.data_root), split)
        return list(self._mdetr_by_image(split))

    def image_samples(self, split: str, key: str) -> list[GroundingSample]:
        """Every caption of one image of ``split`` (``key`` from :meth:`image_keys`)."""
        if self.format == "flickr":
            return flickr.image_samples(self.data_root, key, self.merge_boxes)
        return self._mdetr_by_image(split)[key]

    def _mdetr_by_image(self, split: str) -> dict[str, list[GroundingSample]]:
        if split not in self._cache:
            by_image: dict[str, list[GroundingSample]] = {}
            for sample in mdetr.mdetr_samples(self._source_file(split)):
                by_image.setdefault(sample.file_name, []).append(sample)
            self._cache[split] = by_image
        return self._cache[split]

    def select(
        self, split: str, shots: int | str, seed: int | None, usable: Callable[[GroundingSample], bool]
    ) -> list[GroundingSample]:
        """All captions of ``shots`` images of ``split`` (every image for "all"), in file order.

        Images are visited in a permutation seeded by ``seed`` and taken when one of their captions
        is ``usable`` (has a training box, or a phrase to score), so a K-shot set has K images that
        count; only the visited images' annotations are read (Flickr's are one file per image).
        """
        keys = self.image_keys(split)
        if shots == "all":
            return [s for key in keys for s in self.image_samples(split, key)]
        generator = torch.Generator().manual_seed(int(seed or 0))
        chosen: dict[int, list[GroundingSample]] = {}
        for index in torch.randperm(len(keys), generator=generator).tolist():
            samples = self.image_samples(split, keys[index])
            if any(usable(s) for s in samples):
                chosen[index] = samples
                if len(chosen) == int(shots):
                    break
        if len(chosen) < int(shots):
            warnings.warn(
                f"{self.split_source(split)}: {shots} shots asked for, but only {len(chosen)} images "
                "have a usable caption; all of them are used",
                DataWarning,
                stacklevel=2,
            )
        return [s for index in sorted(chosen) for s in chosen[index]]

    def dataset(
        self,
        split: str,
        shots: int | str = "all",
        seed: int | None = None,
        transforms: Any = "default",
        tokenizer: PreTrainedTokenizerFast | None = None,
        max_query_len: int = MAX_QUERY_LEN,
    ) -> GroundingDataset:
        """Open a split (module docstring): its samples, tokenised, with their image folder checked.

        ``transforms="default"`` is the official resize for the split (multi-scale in training),
        without the flip; a given pipeline has its flip removed.
        """
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        shots = normalize_shots(shots)
        if split == "train" and shots == 0:
            raise ValueError("shots=0 is zero-shot: there is no training set; evaluate val/test only")
        train = split == "train"
        k: int | str = shots if split != "test" and isinstance(shots, int) and shots > 0 else "all"
        samples = self.select(split, k, seed, self._usable(train))
        if isinstance(transforms, str) and transforms == "default":
            transforms = build_transforms(train)
        source = self.split_source(split, k, seed)
        log.info("%s: %s split from %s", self.id, split, source)
        return GroundingDataset(
            samples,
            image_dir=self.image_dirs[split],
            tokenizer=tokenizer or load_tokenizer(),
            max_query_len=max_query_len,
            train=train,
            transforms=without_flip(transforms),
            split=split if k == "all" else f"{split}, {k}-shot, seed {seed}",
            source=source,
            scores_phrases=self.metric == "flickr",
        )

    def _usable(self, train: bool) -> Callable[[GroundingSample], bool]:
        if train:
            return lambda s: bool(s.boxes)
        if self.metric == "flickr":
            return lambda s: bool(s.eval_phrases)
        return lambda s: True


class GroundingDataset(Dataset):
    """One split of a grounding task, yielding ``(image [3, h, w] in [0, 1], target)``.

    The target: ``boxes`` [n, 4] (xyxy, +1 convention, network-input pixels), ``positive_map``
    [n, L] (binary, over the sample's own caption), ``input_ids`` / ``attention_mask`` [L],
    ``phrase_tokens`` (token positions of each scored phrase), ``image_id`` (an index of the image
    file, shared by its captions: what the frozen-feature cache keys a view by), ``sample`` (the
    index in :attr:`samples`, what a prediction is scored against), ``orig_size`` and ``size``.
    """

    def __init__(
        self,
        samples: Sequence[GroundingSample],
        image_dir: Path,
        tokenizer: PreTrainedTokenizerFast,
        max_query_len: int,
        train: bool,
        transforms: Callable[[Any, dict[str, Any]], tuple[Any, dict[str, Any]]] | None,
        split: str,
        source: str,
        scores_phrases: bool = True,
    ) -> None:
        self.image_dir = Path(image_dir)
        self.split = split
        self.source = source
        self.train = train
        self.transforms = transforms
        self.samples, self.encoded = self._encode(samples, tokenizer, max_query_len, scores_phrases)
        require_images(self.samples, self.image_dir, self.where)
        files = sorted({s.file_name for s in self.samples})
        self.image_index = {name: i for i, name in enumerate(files)}

    @property
    def where(self) -> str:
        """The annotation source and split, as errors name them."""
        return f"{self.source} ({self.split} split)"

    def _encode(
        self,
        samples: Sequence[GroundingSample],
        tokenizer: PreTrainedTokenizerFast,
        max_query_len: int,
        scores_phrases: bool,
    ) -> tuple[list[GroundingSample], list[EncodedGrounding]]:
        """Tokenise every caption once; drop the ones that cannot serve (module docstring)."""
        kept, encoded, too_long = [], [], []
        for sample in samples:
            unused = not sample.boxes if self.train else scores_phrases and not sample.eval_phrases
            if unused:
                continue  # nothing to learn from, or nothing to score (MDETR drops those captions too)
            try:
                encoded.append(encode_grounding(sample, tokenizer, max_query_len))
            except CaptionTooLongError as exc:
                if not self.train:
                    raise CaptionTooLongError(
                        f"{self.where}: {exc}; evaluation scores every caption, so it cannot skip one"
                    ) from None
                too_long.append(sample)
                continue
            kept.append(sample)
        if too_long:
            first = too_long[0]
            warnings.warn(
                f"{self.where}: skipped {len(too_long)} of {len(samples)} training captions longer than "
                f"{max_query_len} tokens (e.g. caption {first.sentence_id} of image {first.image_id})",
                DataWarning,
                stacklevel=4,
            )
        if not kept:
            what = "a training box" if self.train else "a phrase to score"
            raise DataError(f"{self.where}: no caption has {what}")
        return kept, encoded

    def __len__(self) -> int:
        return len(self.samples)

    def image_path(self, index: int) -> Path:
        return self.image_dir / self.samples[index].file_name

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]]:
        sample, encoded = self.samples[index], self.encoded[index]
        image = read_image(self.image_path(index))
        hw = (image.height, image.width)
        # Continuous xyxy (x2 = xmax) -> GLIP's +1 convention (x2 = x + w - 1), clipped to the pixels.
        boxes = torch.tensor(sample.boxes, dtype=torch.float32).reshape(-1, 4)
        boxes, keep = clip_boxes(boxes - boxes.new_tensor([0.0, 0.0, 1.0, 1.0]), hw)
        target: dict[str, Any] = {
            "boxes": boxes[keep],
            "positive_map": encoded.positive_map[keep],
            "input_ids": encoded.input_ids,
            "attention_mask": encoded.attention_mask,
            "phrase_tokens": encoded.phrase_tokens,
            "image_id": self.image_index[sample.file_name],
            "sample": index,
            "orig_size": hw,
            "size": hw,
        }
        if self.transforms is None:
            return F.to_tensor(image), target
        return self.transforms(image, target)

    def __repr__(self) -> str:
        return f"GroundingDataset({self.where}, captions={len(self)}, train={self.train})"


def build_grounding_task(c: Mapping[str, Any], root: Path) -> GroundingTask:
    """A GroundingTask from a resolved task config (``build_task`` resolves it and finds ``root``).

    Cheap: nothing is read; :meth:`GroundingTask.check_files` checks the folders before a run.
    """
    task_id = str(c.get("id") or c.get("name") or "grounding")
    fmt = str(c.get("format") or "")
    if fmt not in FORMATS:
        raise ValueError(f"task {task_id}: task.format must be one of {FORMATS}, got {fmt!r}")
    metric = str(c.get("metric") or "flickr")
    if metric not in METRICS:
        raise ValueError(f"task {task_id}: task.metric must be one of {tuple(METRICS)}, got {metric!r}")
    val_metric = str(c.get("val_metric") or METRICS[metric])
    if not _METRIC_KEYS[metric].fullmatch(val_metric):
        raise ValueError(
            f"task {task_id}: task.val_metric={val_metric!r} is not a {metric} metric key "
            f"(e.g. {METRICS[metric]})"
        )
    source = str(c.get("images") or "flickr30k")
    if source not in IMAGE_SOURCES:
        raise ValueError(f"task {task_id}: task.images must be one of {tuple(IMAGE_SOURCES)}, got {source!r}")
    image_dirs = {}
    for split in SPLITS:
        folder = c.get(f"{split}_image_dir") or c.get("image_dir")
        if not folder:
            raise DataError(f"task {task_id}: task.image_dir must be set: {IMAGE_SOURCES[source]}")
        image_dirs[split] = root / Path(str(folder)).expanduser()
    files: dict[str, Path | None] = {
        s: root / Path(str(c[f"{s}_json"])).expanduser() if c.get(f"{s}_json") else None for s in SPLITS
    }
    files["test"] = files["test"] or files["val"]
    files["val"] = files["val"] or files["test"]
    return GroundingTask(
        id=task_id,
        name=str(c.get("name") or task_id),
        format=fmt,
        data_root=root,
        image_dirs=image_dirs,
        files=files,
        metric=metric,
        val_metric=val_metric,
        max_boxes=int(c.get("max_boxes") or 100),
        merge_boxes=bool(c.get("merge_boxes", False)),
        images_help=IMAGE_SOURCES[source],
    )
