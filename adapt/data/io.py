"""Reading dataset files (JSON, images) with errors that name the file and the problem.

Writing is `adapt.atomic`'s job.
"""

from __future__ import annotations

import json
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
    path = Path(path)
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError as exc:
        raise DataError(f"{path}: image file not found") from exc
    except UnidentifiedImageError as exc:
        raise DataError(f"{path}: not a readable image (unknown or corrupt format)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: image is truncated or corrupt ({exc})") from exc
