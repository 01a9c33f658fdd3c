"""The images a predict command reads and the drawn copies it writes, for both predict CLIs.

``adapt.predict`` and ``python -m adapt.deploy predict`` take image files and folders (a folder
stands for the images directly in it, in name order) and write one drawn JPEG per input into the
output folder. The drawn copy is named after its input (``<stem>.jpg``), except where that name
is one of the inputs themselves (``--out .`` beside ``a.jpg``: the user's image would be
re-encoded in place) or where two inputs share a stem (``d1/x.jpg d2/x.jpg``): those take
``<stem>-2.jpg``, ``<stem>-3.jpg``, ... so no input is overwritten and no drawn copy replaces
another. ``detections.json`` records each input's drawn file (``images[].drawn``).

Torch-free: the deployed runtime imports it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

# What a folder argument expands to (PIL reads all of them).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def expand_images(args: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Files as given; a folder becomes the image files directly in it, sorted by name.

    A folder without images, or a path that does not exist, raises FileNotFoundError in one
    sentence (naming it, and for a folder the suffixes looked for).
    """
    images: list[Path] = []
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(
                    f"{path}: a folder with no image files in it (looked for {', '.join(IMAGE_SUFFIXES)})"
                )
            images.extend(found)
        elif path.exists():
            images.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such image file or folder")
    return images


def drawn_paths(images: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]) -> list[Path]:
    """Where each input's drawn copy goes in ``out``: ``<stem>.jpg``, or ``<stem>-<n>.jpg`` (the
    smallest n >= 2 free) where that is an input or already given to an earlier input."""
    folder = Path(out)
    inputs = [Path(p) for p in images]
    taken = {p.resolve() for p in inputs}  # symbolic links and "./a.jpg" resolve to the file itself
    result = []
    for path in inputs:
        stem, n = path.stem, 1
        target = folder / f"{stem}.jpg"
        while target.resolve() in taken:
            n += 1
            target = folder / f"{stem}-{n}.jpg"
        taken.add(target.resolve())
        result.append(target)
    return result
