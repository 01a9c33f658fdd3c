"""Reading a checkpoint file that nobody vouches for: safely, frugally, and with errors that say
what the file is.

``torch.load(weights_only=True)`` refuses every pickled global outside an allowlist; release files
also hold numpy scalars (an ``iteration`` counter), so those, and only those, are allowed. A file
that is not a checkpoint at all (a saved web page, an interrupted download, an empty file) is
named for what it is, with the command that fetches a good copy, instead of torch's advice to turn
``weights_only`` off. Split from :mod:`adapt.model.checkpoint`, which maps the names.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or does not fit the model; the message names the file."""


# torch.save's archive is a zip; files from torch < 1.6 start with a pickled magic number instead.
ZIP_MAGIC = b"PK\x03\x04"
LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8"
# Scalar types whose numpy dtype classes a pickled numpy scalar may name (bool, ints, floats, complex).
_NUMPY_SCALAR_CODES = "?bhilqpBHILQPefdgFDG"


def safe_numpy_globals() -> list[Any]:
    """The numpy globals a release checkpoint may name besides tensors: scalars and their dtypes.

    Training loops save counters and metrics as numpy scalars (``iteration`` as ``numpy.int64``);
    rebuilding one needs ``multiarray.scalar``, ``numpy.dtype`` and the dtype's class, which only
    decode bytes into a number. numpy 2 renamed ``numpy.core`` to ``numpy._core``; files written
    by numpy 1 still say ``numpy.core.multiarray.scalar``, so both names are allowed. Arrays and
    anything else stay refused.
    """
    import numpy as np

    core: Any = np._core if hasattr(np, "_core") else np.core
    scalar = core.multiarray.scalar
    dtypes = {type(np.dtype(code)) for code in _NUMPY_SCALAR_CODES}
    return [
        np.dtype,
        *sorted(dtypes, key=lambda t: t.__name__),
        (scalar, "numpy.core.multiarray.scalar"),
        (scalar, "numpy._core.multiarray.scalar"),
    ]


# What ``--allow-global`` may add for a file the user trusts: numpy's *data* types, whose unpickling
# only rebuilds arrays, dtypes and scalars from bytes. Anything else a pickle names is a function it
# would call on load (``builtins.exec``, ``os.system``, ``getattr``, ``subprocess.Popen``): never
# allowed, whatever the user asks.
DATA_GLOBALS = (
    "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct",
    "numpy.ndarray",
    "numpy.dtype",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
)
_DTYPE_CLASS = re.compile(r"^numpy\.dtypes\.[A-Za-z0-9]+DType$")


def is_data_global(name: str) -> bool:
    """Whether a pickled global ``name`` only rebuilds data (an array, a dtype, a scalar)."""
    return name in DATA_GLOBALS or bool(_DTYPE_CLASS.match(name))


def data_global(name: str) -> tuple[object, str]:
    """The object behind a data global ``name``, for torch's allowlist; anything else is refused.

    The name is checked before anything is imported, so ``--allow-global some_module.x`` cannot
    import ``some_module``.
    """
    if not is_data_global(name):
        raise CheckpointError(
            f"--allow-global {name}: not a data type; adapt only allows numpy arrays, dtypes and "
            f"scalars ({', '.join(DATA_GLOBALS)}, numpy.dtypes.*DType), never a function a pickle "
            "would call"
        )
    import importlib

    module, _, attr = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr), name
    except (ImportError, AttributeError):
        raise CheckpointError(f"--allow-global {name}: no such global in this numpy") from None


def _allowed_global_names() -> set[str]:
    names = set()
    for entry in safe_numpy_globals():
        if isinstance(entry, tuple):
            names.add(entry[1])
        else:
            names.add(f"{entry.__module__}.{entry.__qualname__}")
    return names


def describe_bad_file(path: str | Path) -> str | None:
    """What a file that is not a readable torch checkpoint actually is; None if it looks like one.

    Checks only what is cheap and certain: emptiness, a web page saved under the checkpoint's
    name (a login page, a ``/tree/`` or ``/blob/`` URL), and a zip archive whose central
    directory is missing, which is what an interrupted download leaves.
    """
    import zipfile

    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return "an empty file (0 bytes)"
    with open(path, "rb") as f:
        head = f.read(1024)
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")) or b"<html" in text[:512]:
        return f"an HTML page ({size} bytes), not a checkpoint"
    if head.startswith(ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            return f"a truncated torch archive ({size} bytes: the zip's central directory is missing)"
        return None
    if head.startswith(LEGACY_TORCH_MAGIC):
        return None
    if head[:1] in (b"{", b"[") or head.isascii():
        return f"a text file ({size} bytes), not a checkpoint"
    return f"not a torch checkpoint ({size} bytes starting with {head[:8]!r})"


def refetch_hint(path: str | Path) -> str:
    """How to get a good copy: the download command when the file is a shipped model's checkpoint."""
    from adapt.model.config import model_config, model_names

    name = Path(path).name
    for model in model_names():
        if (model_config(model).get("checkpoint") or {}).get("file") == name:
            return f"fetch a good copy with: python -m adapt.download {model}"
    return "replace it with a good copy (download or save it again)"


def _convert_command(path: Path, unsafe: list[str]) -> str:
    """The one-time conversion, every argument quoted for the shell (``shlex.quote``)."""
    from adapt.model.config import model_config, model_names

    model = next(
        (m for m in model_names() if (model_config(m).get("checkpoint") or {}).get("file") == path.name),
        "<model>",
    )
    target = path.with_suffix(".safetensors")
    allow = " ".join(f"--allow-global {shlex.quote(g)}" for g in unsafe)
    return (
        f"python -m adapt.convert {shlex.quote(str(path))} {shlex.quote(str(target))} "
        f"--model {shlex.quote(model)} {allow}"
    )


def torch_load_safely(path: str | Path, extra_globals: Sequence[Any] = ()) -> object:
    """``torch.load(weights_only=True, mmap=True)`` with numpy scalars allowed; errors say what the file is.

    mmap maps the archive instead of reading it: a release file's optimizer state and the tensors
    that are not used are never brought into memory, and the weights that are used are copied once
    (into the model) instead of twice. A file that needs other globals gets an error naming them
    and the one-time conversion command, never the advice to disable ``weights_only``.
    """
    import pickle

    path = Path(path)
    problem = describe_bad_file(path)
    if problem is not None:
        raise CheckpointError(f"cannot read checkpoint {path}: it is {problem}; {refetch_hint(path)}")
    with open(path, "rb") as f:
        mmap = f.read(len(ZIP_MAGIC)) == ZIP_MAGIC  # torch maps only zip archives
    try:
        with torch.serialization.safe_globals([*safe_numpy_globals(), *extra_globals]):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:  # a global outside the allowlist
        allowed = _allowed_global_names() | {
            g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}" for g in extra_globals
        }
        try:
            unsafe = [
                g for g in torch.serialization.get_unsafe_globals_in_checkpoint(path) if g not in allowed
            ]
        except Exception:  # the archive is damaged beyond listing its globals
            unsafe = []
        if not unsafe:
            raise CheckpointError(
                f"cannot read checkpoint {path}: its pickle is damaged; {refetch_hint(path)}"
            ) from None
        calls = [g for g in unsafe if not is_data_global(g)]
        if calls:
            raise CheckpointError(
                f"checkpoint {path} is refused: its pickle would call {', '.join(calls)} when loaded, "
                "which a checkpoint never needs (it may run code); get the weights from a source you "
                f"trust ({refetch_hint(path)})"
            ) from None
        raise CheckpointError(
            f"checkpoint {path} holds {', '.join(unsafe)}, which adapt does not unpickle (only tensors, "
            "containers and numpy scalars are read from untrusted files); if you trust the file, convert it "
            f"once with: {_convert_command(path, unsafe)}"
        ) from None
    except CheckpointError:
        raise
    except Exception as exc:  # torch raises many types for a damaged archive
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"cannot read checkpoint {path}: {type(exc).__name__}: {reason}; {refetch_hint(path)}"
        ) from None
