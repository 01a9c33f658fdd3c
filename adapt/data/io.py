"""Reading dataset files (JSON, images) with errors that name the file and the problem.

Writing is `adapt.atomic`'s job.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from adapt.data.errors import DataError


def read_json(path: str | Path) -> Any:
    """Read a JSON file, turning every failure into a DataError that names the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: annotation file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read file ({exc})") from exc
    if not text.strip():
        raise DataError(f"{path}: file is empty")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        ) from exc


def read_image(path: str | Path) -> Image.Image:
    """Load an image the way the official loader does: `Image.open(path).convert("RGB")`.

    Grayscale, palette, RGBA and CMYK files are converted by PIL's own rules (alpha is dropped, not
    composited), and the EXIF orientation tag is deliberately ignored: the official code never calls
    `ImageOps.exif_transpose`, so its boxes refer to the stored pixel grid, and so do ours.
    Truncated files are an error (PIL's default), never silently padded.
    """
    with open_image(path) as im:
        return im.convert("RGB")


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of the stored pixels, from the file's header alone (PIL opens lazily).

    Cheap enough (well under a millisecond a file) to run over every image of a split when it is
    opened: a missing, empty or non-image file fails there, and the size is what boxes are clipped to.
    """
    with open_image(path) as im:
        return im.size


def decode_image(path: str | Path) -> None:
    """Decode all of the file's compressed data, as training will, and discard the pixels.

    A truncated JPEG or PNG passes `Image.open` and `Image.verify` (which reads no JPEG data) and
    only fails when decoded; this finds it before training. JPEGs decode in draft mode at 1/8
    scale: every byte is still entropy-decoded, so truncation and broken streams raise exactly as in
    `read_image`, at a third of the cost of a full decode for large photos.
    """
    with open_image(path) as im:
        im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
        im.load()


@contextlib.contextmanager
def open_image(path: str | Path) -> Iterator[Image.Image]:
    """`Image.open`, with every way an image file can fail (opening or decoding it inside the block)
    turned into one DataError that names the file."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            yield im
    except FileNotFoundError as exc:
        raise DataError(f"{path}: image file not found") from exc
    except UnidentifiedImageError as exc:
        raise DataError(f"{path}: not a readable image (unknown or corrupt format)") from exc
    except (IsADirectoryError, PermissionError) as exc:
        raise DataError(f"{path}: cannot read file ({exc.strerror})") from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: image is truncated or corrupt ({exc})") from exc
