"""The pre-flight check of a run: decode every image of every split before the first training step.

Opening a split (`Task.dataset`) already validates its annotation file, fixes its boxes and reads
every image header, so a missing or non-image file fails at once. A file whose header is intact
but whose body is truncated or corrupt (an interrupted copy or download) passes all of that and
would only fail when decoded: in the first evaluation, or in the test after hours of training.
`check_images` decodes each file once, before training, in a thread pool (Pillow releases the GIL
while decoding).

Cost (`benchmarks/data_preflight.py`, 2-vCPU AMD EPYC shared with other jobs at load ~12, so
upper bounds): the demo's 11 images take 27 ms (opening its three splits 29 ms); 640x640 JPEGs
10 ms an image and 4000x3000 photos 180 ms an image on one thread, against 22 and 500 ms for the
full decode that training does. Every evaluation decodes the same files at full size and runs the
model on them, so the check costs less than one evaluation pass of what it protects. A header-only
check (`Image.verify` reads no JPEG data) would miss a truncated body, which is what an interrupted
copy or download leaves.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from adapt.data.coco import CocoDetection, unreadable_images_error
from adapt.data.errors import DataError
from adapt.data.grounding_task import GroundingDataset
from adapt.data.io import decode_image

log = logging.getLogger(__name__)

# Enough threads to hide file-system latency; decoding itself is bounded by the cores.
MAX_THREADS = 8


@dataclass(frozen=True)
class ImageCheck:
    """What the pre-flight check covered, for the log and for tests."""

    images: int
    splits: tuple[str, ...]
    seconds: float


def _decode(path: Path) -> str | None:
    try:
        decode_image(path)
    except DataError as exc:
        return str(exc)
    return None


def empty_split_error(ds: CocoDetection | GroundingDataset) -> DataError:
    """A split without images: the run would train, then fail where it evaluates it."""
    key = ds.split.split(",")[0]
    purpose = "train on" if key == "train" else "evaluate"
    return DataError(
        f"{ds.where} lists no images, so the run has nothing to {purpose}: "
        f"point task.{key}_json at an annotation file that lists the {key} images"
    )


def check_images(
    datasets: Iterable[CocoDetection | GroundingDataset], threads: int | None = None
) -> ImageCheck:
    """Decode every image the given splits read (each file once); raise a DataError on an empty
    split, or on the first unreadable image, naming the file, its annotation file and split, and
    counting the others."""
    owner: dict[Path, CocoDetection | GroundingDataset] = {}
    splits = []
    for ds in datasets:
        if len(ds) == 0:
            raise empty_split_error(ds)
        splits.append(ds.split)
        for i in range(len(ds)):
            owner.setdefault(ds.image_path(i), ds)
    if threads is None:
        threads = min(MAX_THREADS, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
    start = time.perf_counter()
    paths = list(owner)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        problems = [(p, err) for p, err in zip(paths, pool.map(_decode, paths), strict=True) if err]
    seconds = time.perf_counter() - start
    if problems:
        first_path = problems[0][0]
        raise unreadable_images_error([err for _, err in problems], owner[first_path].where)
    log.info(
        "pre-flight: decoded all %d images of the %s splits in %.1f s", len(paths), ", ".join(splits), seconds
    )
    return ImageCheck(images=len(paths), splits=tuple(splits), seconds=seconds)
