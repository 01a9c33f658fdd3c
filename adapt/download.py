"""Datasets and official checkpoints from the Hugging Face hub, resumable and verified.

    python -m adapt.download odinw/aquarium        # one ODinW dataset (task config name)
    python -m adapt.download odinw/all             # the 13 ODinW datasets
    python -m adapt.download glip_t                # a model's official checkpoint (conf/model/)

Files come from direct-file URLs (`<hub>/odinw_35/<Name>.zip`, `<hub>/<checkpoint>`) of
GLIPModel/GLIP; the official script's `tree/` URLs return an HTML page, not the file. The hub base
URL is `ADAPT_HUB_URL` (tests point it at 127.0.0.1). Downloads go to `<file>.part` and resume with
an HTTP Range request; the size (Content-Length / Content-Range / X-Linked-Size) and, when known,
the SHA-256 (the config's `sha256` or the hub's X-Linked-Etag) are checked before the file is
renamed into place. Zips are unpacked into a temporary folder and renamed into the data folder, so
a half-unpacked dataset is never mistaken for a complete one.

Where things go: checkpoints in `<cache>/checkpoints/`, ODinW under the task's `download_dir`
(by default `<cache>/datasets/odinw`), with `<cache>` = config `cache_dir`, else `ADAPT_CACHE`,
else `~/.cache/adapt`. `ADAPT_OFFLINE=1` (or `HF_HUB_OFFLINE=1`) makes every fetch fail at once.

A training job calls `require_dataset(cfg.task)` and `require_checkpoint(cfg.model, cfg.cache_dir)`
first: they return the paths or raise MissingDataError saying what is missing and which command
fetches it.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from omegaconf import DictConfig, OmegaConf

import adapt
from adapt.data.task import data_path, resolve_config
from adapt.model.config import model_config, model_names

DEFAULT_HUB_URL = "https://huggingface.co/GLIPModel/GLIP/resolve/main"
DEFAULT_CACHE = "~/.cache/adapt"
CONF_DIR = Path(adapt.__file__).resolve().parent / "conf"
CHUNK = 1 << 20
SHA256 = re.compile(r"^[0-9a-f]{64}$")


class MissingDataError(FileNotFoundError):
    """Data or weights a run needs are not on disk; the message says what and how to fetch it."""


class DownloadError(RuntimeError):
    """A fetch failed (network, HTTP status, size or checksum); the message names the URL or file."""


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The cache root: explicit value (config `cache_dir`), else ADAPT_CACHE, else ~/.cache/adapt."""
    value = override or os.environ.get("ADAPT_CACHE") or DEFAULT_CACHE
    return Path(value).expanduser()


def hub_url(override: str | None = None) -> str:
    """The hub base URL: explicit value, else ADAPT_HUB_URL, else GLIPModel/GLIP's resolve/main."""
    return (override or os.environ.get("ADAPT_HUB_URL") or DEFAULT_HUB_URL).rstrip("/")


def is_offline() -> bool:
    """True when the user asked for no network (ADAPT_OFFLINE or HF_HUB_OFFLINE set to 1/true/yes)."""
    return any(
        os.environ.get(k, "").lower() in ("1", "true", "yes") for k in ("ADAPT_OFFLINE", "HF_HUB_OFFLINE")
    )


def file_url(name: str, url: str | None = None, hub: str | None = None) -> str:
    """URL of a hub file; a configured full URL on the default hub follows an ADAPT_HUB_URL override."""
    base = hub_url(hub)
    if url:
        if url.startswith(DEFAULT_HUB_URL + "/"):
            return base + url[len(DEFAULT_HUB_URL) :]
        return url
    return f"{base}/{name.lstrip('/')}"


# ----------------------------------------------------------------------------------------------
# One file over HTTP


class _HeaderRecorder(urllib.request.HTTPRedirectHandler):
    """Keeps the headers of redirect responses: the hub puts X-Linked-Etag/-Size on its 302."""

    def __init__(self) -> None:
        self.headers: list[Mapping[str, str]] = []

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: Mapping[str, str],
        newurl: str,
    ) -> urllib.request.Request | None:
        self.headers.append(headers)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _hub_sha256(headers: Sequence[Mapping[str, str]]) -> str | None:
    for h in headers:
        for key in ("X-Linked-Etag", "ETag"):
            value = (h.get(key) or "").strip().strip('"').lower()
            if SHA256.match(value):
                return value
    return None


def _total_size(resp: Any, start: int, headers: Sequence[Mapping[str, str]]) -> int | None:
    content_range = resp.headers.get("Content-Range") or ""
    if resp.status == 206 and "/" in content_range and not content_range.endswith("*"):
        return int(content_range.rsplit("/", 1)[1])
    if resp.headers.get("Content-Length") is not None:
        return start + int(resp.headers["Content-Length"])
    for h in headers:
        if h.get("X-Linked-Size"):
            return int(h["X-Linked-Size"])
    return None


def _progress(enabled: bool) -> Any:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
    )


def _attempt(url: str, part: Path, timeout: float, progress: bool) -> tuple[int | None, str | None]:
    """One request appending to `part` from its current size; returns (total size, hub sha256)."""
    start = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": f"adapt/{adapt.__version__}"}
    if start:
        headers["Range"] = f"bytes={start}-"
    recorder = _HeaderRecorder()
    opener = urllib.request.build_opener(recorder)
    try:
        resp = opener.open(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:  # nothing left to send: the part file is already whole
            total = (exc.headers.get("Content-Range") or "").rsplit("/", 1)[-1]
            return (int(total) if total.isdigit() else start), _hub_sha256([*recorder.headers, exc.headers])
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"cannot reach {url} ({reason})") from exc
    with resp:
        seen = [*recorder.headers, resp.headers]
        if start and resp.status != 206:  # the server ignored Range: start over
            start = 0
        total = _total_size(resp, start, seen)
        with open(part, "ab" if start else "wb") as f, _progress(progress) as bar:
            job = bar.add_task(Path(part.name[: -len(".part")]).name, total=total, completed=start)
            while block := resp.read(CHUNK):
                f.write(block)
                bar.advance(job, len(block))
        return total, _hub_sha256(seen)


def fetch(
    url: str,
    dest: str | os.PathLike[str],
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 30.0,
    retries: int = 3,
) -> Path:
    """Download `url` to `dest` (resuming `dest.part`), check size and checksum, rename into place.

    An existing `dest` is trusted when no checksum is given, so a run with its files in place never
    touches the network. A dropped connection is resumed up to `retries` times; a checksum mismatch
    deletes the partial file (it cannot be repaired by resuming) and raises.
    """
    dest = Path(dest)
    if dest.is_file() and (sha256 is None or sha256_of(dest) == sha256.lower()):
        return dest
    if is_offline():
        raise DownloadError(f"offline (ADAPT_OFFLINE/HF_HUB_OFFLINE is set): cannot fetch {url}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            total, hub_sha = _attempt(url, part, timeout, progress)
        except (OSError, http.client.HTTPException) as exc:  # connection lost mid-stream
            if attempt == retries:
                raise DownloadError(f"{url}: connection lost ({exc}); run again to resume {part}") from exc
            time.sleep(min(2**attempt, 10) * 0.1)
            continue
        size = part.stat().st_size
        if total is not None and size < total and attempt < retries:
            continue  # the stream ended early; resume from where it stopped
        if total is not None and size != total:
            raise DownloadError(f"{url}: got {size} of {total} bytes; run again to resume {part}")
        expected = (sha256 or hub_sha or "").lower() or None
        if expected is not None and (actual := sha256_of(part)) != expected:
            part.unlink()
            raise DownloadError(
                f"{url}: SHA-256 {actual} does not match {expected}; the partial file was deleted"
            )
        os.replace(part, dest)
        return dest
    raise DownloadError(f"{url}: download did not complete; run again to resume {part}")  # pragma: no cover


# ----------------------------------------------------------------------------------------------
# Zip archives


def extract_zip(archive: Path, target_root: Path, name: str) -> Path:
    """Unpack `archive` so that it becomes `target_root/name`, atomically.

    The hub zips hold one top folder `<Name>/` (the official script unzips them into DATASET/odinw);
    an archive without one is placed under `name` whole. Member paths escaping the folder are refused.
    """
    target_root.mkdir(parents=True, exist_ok=True)
    final = target_root / name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".extract", dir=target_root))
    try:
        try:
            with zipfile.ZipFile(archive) as zf:
                for member in zf.namelist():
                    resolved = (tmp / member).resolve()
                    if not resolved.is_relative_to(tmp.resolve()):
                        raise DownloadError(f"{archive}: unsafe member path {member!r}")
                zf.extractall(tmp)
        except zipfile.BadZipFile as exc:
            raise DownloadError(f"{archive}: not a valid zip archive ({exc})") from exc
        shutil.rmtree(tmp / "__MACOSX", ignore_errors=True)
        entries = list(tmp.iterdir())
        source = entries[0] if len(entries) == 1 and entries[0].is_dir() and entries[0].name == name else tmp
        if final.exists():
            old = tmp.with_suffix(".old")
            os.replace(final, old)
            os.replace(source, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(source, final)
        return final
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# Tasks and models


def _as_dict(cfg: Mapping[str, Any] | DictConfig) -> dict[str, Any]:
    return resolve_config(cfg)


def dataset_files(task_cfg: Mapping[str, Any] | DictConfig) -> list[Path]:
    """The annotation files and image folders a task needs (prepared few-shot files are optional)."""
    c = _as_dict(task_cfg)
    root = data_path(c.get("data_root") or "")
    paths: list[Path] = []
    for split in ("train", "val", "test"):
        if c.get(f"{split}_json"):
            paths.append(root / c[f"{split}_json"])
            image_dir = c.get(f"{split}_image_dir") or c.get("image_dir")
            if image_dir:
                paths.append(root / image_dir)
    return list(dict.fromkeys(paths))


def fetch_command(task_cfg: Mapping[str, Any] | DictConfig) -> str | None:
    """The command that downloads a task's data, or None for tasks that are not on the hub."""
    c = _as_dict(task_cfg)
    if not c.get("hub_file"):
        return None
    command = f"python -m adapt.download {c.get('id')}"
    default_dir = cache_dir() / "datasets" / "odinw"
    if c.get("download_dir") and data_path(c["download_dir"]) != default_dir:
        command += f" --data-dir '{c['download_dir']}'"
    return command


def missing_files(task_cfg: Mapping[str, Any] | DictConfig) -> list[Path]:
    """What `dataset_files` lacks; a missing data root is reported once instead of file by file."""
    c = _as_dict(task_cfg)
    root = data_path(c.get("data_root") or "")
    if not root.is_dir():
        return [root]
    return [p for p in dataset_files(c) if not p.exists()]


def require_dataset(
    task_cfg: Mapping[str, Any] | DictConfig, download: bool = False, progress: bool = True
) -> Path:
    """Return the task's data root, or raise MissingDataError naming every missing file and the fix.

    With `download=True` a hub dataset that is missing is fetched first; if that fails (offline,
    network down) the error still says what is missing and how to fetch it later.
    """
    c = _as_dict(task_cfg)
    missing = missing_files(c)
    if not missing:
        return data_path(c["data_root"])
    command = fetch_command(c)
    reason = ""
    if download and command is not None:
        try:
            fetch_dataset(c, progress=progress)
            missing = missing_files(c)
            if not missing:
                return data_path(c["data_root"])
            reason = " (the downloaded archive does not contain them)"
        except DownloadError as exc:
            reason = f" (download failed: {exc})"
    shown = "\n  ".join(map(str, missing))
    fix = (
        f"Fetch it with:\n  {command}"
        if command
        else "Point task.data_root (and task.train_json/val_json/test_json, task.image_dir) at your files."
    )
    raise MissingDataError(f"task {c.get('id') or c.get('name')}: missing data{reason}:\n  {shown}\n{fix}")


def fetch_dataset(
    task_cfg: Mapping[str, Any] | DictConfig,
    hub: str | None = None,
    progress: bool = True,
    keep_zip: bool = False,
    force: bool = False,
) -> Path:
    """Download and unpack a hub dataset (task config keys `hub_file`, `download_dir`, `data_root`)."""
    c = _as_dict(task_cfg)
    if not c.get("hub_file"):
        raise DownloadError(f"task {c.get('id')}: not a hub dataset (no hub_file); nothing to download")
    data_root = data_path(c["data_root"])
    if not force and not missing_files(c):
        return data_root
    download_dir = data_path(c["download_dir"])
    archive_name = Path(c["hub_file"]).name
    archive = fetch(file_url(c["hub_file"], hub=hub), download_dir / archive_name, progress=progress)
    extract_zip(archive, download_dir, Path(archive_name).stem)
    if not keep_zip:
        archive.unlink(missing_ok=True)
    return data_root


def checkpoint_path(
    model_cfg: Mapping[str, Any] | DictConfig, cache: str | os.PathLike[str] | None = None
) -> Path | None:
    """Where a model's official checkpoint lives in the cache; None when the model has none."""
    ckpt = _as_dict(model_cfg).get("checkpoint") or {}
    if not ckpt.get("file"):
        return None
    return cache_dir(cache) / "checkpoints" / str(ckpt["file"])


def fetch_checkpoint(
    model_cfg: Mapping[str, Any] | DictConfig,
    cache: str | os.PathLike[str] | None = None,
    hub: str | None = None,
    progress: bool = True,
) -> Path | None:
    """Download a model's checkpoint (keys `checkpoint.file`, `checkpoint.url`, `checkpoint.sha256`)."""
    ckpt = _as_dict(model_cfg).get("checkpoint") or {}
    dest = checkpoint_path(model_cfg, cache)
    if dest is None:
        return None
    return fetch(
        file_url(str(ckpt["file"]), ckpt.get("url"), hub), dest, sha256=ckpt.get("sha256"), progress=progress
    )


def require_checkpoint(
    model_cfg: Mapping[str, Any] | DictConfig,
    cache: str | os.PathLike[str] | None = None,
    download: bool = False,
    progress: bool = True,
) -> Path | None:
    """The model's checkpoint path (None: no official weights), or MissingDataError with the fix."""
    c = _as_dict(model_cfg)
    dest = checkpoint_path(c, cache)
    if dest is None or dest.is_file():
        return dest
    reason = ""
    if download:
        try:
            return fetch_checkpoint(c, cache, progress=progress)
        except DownloadError as exc:
            reason = f" (download failed: {exc})"
    command = f"python -m adapt.download {c.get('name') or c['checkpoint']['file']}"
    if cache is not None and cache_dir(cache) != cache_dir():
        command += f" --cache-dir '{cache}'"
    raise MissingDataError(
        f"model {c.get('name')}: missing checkpoint{reason}:\n  {dest}\nFetch it with:\n  {command}"
    )


def load_config(group: str, option: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose `conf/<group>/<option>.yaml` alone (as Hydra would inside the job) and return that node."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(overrides=[f"+{group}={option}", *overrides])
    node = cfg[group]
    OmegaConf.set_readonly(node, False)
    return node


def odinw_tasks() -> list[str]:
    """The ODinW task options shipped in conf/task/odinw/ (what `odinw/all` fetches)."""
    return sorted(f"odinw/{p.stem}" for p in (CONF_DIR / "task" / "odinw").glob("*.yaml"))


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m adapt.download", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="+", help="odinw/<task>, odinw/all, or a model name (conf/model/)")
    parser.add_argument("--cache-dir", help="cache root (default: $ADAPT_CACHE or ~/.cache/adapt)")
    parser.add_argument("--data-dir", help="where ODinW is unpacked (default: <cache>/datasets/odinw)")
    parser.add_argument("--hub-url", help=f"hub base URL (default: $ADAPT_HUB_URL or {DEFAULT_HUB_URL})")
    parser.add_argument("--keep-zip", action="store_true", help="keep the downloaded archives")
    parser.add_argument("--force", action="store_true", help="download again even if the data is present")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    names: list[str] = []
    for name in args.names:
        names += odinw_tasks() if name == "odinw/all" else [name]
    overrides = [f"+cache_dir={args.cache_dir}"] if args.cache_dir else []
    failed = 0
    for name in names:
        try:
            if (CONF_DIR / "task" / f"{name}.yaml").is_file():
                task_overrides = (
                    [*overrides, f"task.download_dir={args.data_dir}"] if args.data_dir else overrides
                )
                cfg = load_config("task", name, task_overrides)
                root = fetch_dataset(cfg, args.hub_url, not args.no_progress, args.keep_zip, args.force)
                require_dataset(cfg)
                print(f"{name}: {root}")
            elif name in model_names():
                cfg = model_config(name)
                path = fetch_checkpoint(cfg, args.cache_dir, args.hub_url, not args.no_progress)
                print(f"{name}: {path if path else 'no official checkpoint; nothing to download'}")
            else:
                models = model_names()
                print(
                    f"{name}: unknown; use odinw/<task> ({', '.join(odinw_tasks())}), odinw/all, "
                    f"or one of {models}",
                    file=sys.stderr,
                )
                failed += 1
        except (DownloadError, MissingDataError) as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
