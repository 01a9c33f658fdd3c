"""Datasets and official checkpoints from the Hugging Face hub, verified before use.

    python -m adapt.download odinw/aquarium        # one ODinW dataset (task config name)
    python -m adapt.download odinw/all             # the 13 ODinW datasets
    python -m adapt.download glip_t                # a model's official checkpoint (conf/model/)

Every file comes from a hub repo (``GLIPModel/GLIP``: config keys ``checkpoint.repo`` and
``hub_repo``) through ``huggingface_hub.hf_hub_download``, so what users of every other HF tool
rely on applies: the shared HF cache (a file already there is not fetched again), ``HF_ENDPOINT``
for mirrors, ``HF_TOKEN``, ``HF_HUB_OFFLINE``, the library's resumed transfers, retries and
progress bars. ``ADAPT_HUB_URL``, adapt's former base URL, is retired in favour of
``HF_ENDPOINT``.

Where things go:

* checkpoints stay in the HF cache (``HF_HUB_CACHE``, by default ``~/.cache/huggingface/hub``),
  where any HF tool finds them and ``hf cache`` manages them;
* an ODinW zip is fetched into ``<download_dir>/.<Name>.hub/`` (copied from the HF cache if it is
  there), unpacked atomically into ``download_dir`` and deleted (``--keep-zip`` keeps it);
* adapt's own cache, ``<cache>`` = config ``cache_dir``, else ``ADAPT_CACHE``, else
  ``~/.cache/adapt``, holds the unpacked datasets (default ``download_dir``:
  ``<cache>/datasets/odinw``) and ``verified_checkpoints.json``, the size and SHA-256 of every
  checkpoint verified so far.

A checkpoint is verified because a file of the right name proves nothing (a saved web page has
passed for one): it must be a torch archive (not an HTML page, an empty file or a truncated zip),
have the size the hub reported, match the config's pinned ``size``/``sha256`` and the hub's
SHA-256 ETag, and on later use still have the size and SHA-256 recorded when it was first
verified. A file that fails right after its download is removed from the HF cache; a cached file
that fails later is fetched again by ``python -m adapt.download <model>``.

A training job calls ``require_dataset(cfg.task)`` and ``require_checkpoint(cfg.model)`` first:
they return the paths or raise MissingDataError saying what is missing and which command fetches it.

One module on purpose (about 600 lines): datasets and checkpoints share the hub call and its error
messages, the cache layout, the verification ledger and the ``require_*`` advice, so that where a
file comes from and how it is checked is said in one place.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

import adapt
from adapt.atomic import write_json
from adapt.data.task import PACKAGE_PREFIX, data_path, resolve_config
from adapt.digest import file_sha256
from adapt.model.config import model_config, model_names

DEFAULT_CACHE = "~/.cache/adapt"
CONF_DIR = Path(adapt.__file__).resolve().parent / "conf"
LEDGER = "verified_checkpoints.json"
CHUNK = 1 << 20
SHA256 = re.compile(r"^[0-9a-f]{64}$")
TRUE = ("1", "true", "yes", "on")

log = logging.getLogger(__name__)


class MissingDataError(FileNotFoundError):
    """Data or weights a run needs are not on disk; the message says what and how to fetch it."""


class DownloadError(RuntimeError):
    """A fetch or a verification failed; the message names the file and what to do."""


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """adapt's cache root: explicit value (config `cache_dir`), else ADAPT_CACHE, else ~/.cache/adapt."""
    value = override or os.environ.get("ADAPT_CACHE") or DEFAULT_CACHE
    return Path(value).expanduser()


def is_offline() -> bool:
    """True when the user asked for no network: HF_HUB_OFFLINE (or the older ADAPT_OFFLINE) set.

    huggingface_hub reads HF_HUB_OFFLINE once, at import; the environment is read again here so
    that a value set later (in a notebook, say) is honoured too.
    """
    from huggingface_hub import constants

    env = any(os.environ.get(k, "").lower() in TRUE for k in ("HF_HUB_OFFLINE", "ADAPT_OFFLINE"))
    return env or constants.is_offline_mode()


def hub_endpoint(override: str | None = None) -> str | None:
    """The hub endpoint: explicit value, else HF_ENDPOINT (read now, not at import), else the library's."""
    if os.environ.get("ADAPT_HUB_URL") and not (override or os.environ.get("HF_ENDPOINT")):
        raise DownloadError(
            "ADAPT_HUB_URL is no longer read: set HF_ENDPOINT to the mirror's root instead "
            "(for example HF_ENDPOINT=https://hf-mirror.com) and unset ADAPT_HUB_URL"
        )
    value = override or os.environ.get("HF_ENDPOINT")
    return value.rstrip("/") if value else None


def hf_cache_dir() -> Path:
    """The HF hub cache the checkpoints live in (HF_HUB_CACHE / HF_HOME, as huggingface_hub resolves it)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


# ----------------------------------------------------------------------------------------------
# One hub file


@contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    """The library's download bars, switched off for this call only when `enabled` is False."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    if not enabled and not was_disabled:
        disable_progress_bars()
    try:
        yield
    finally:
        if not enabled and not was_disabled:
            enable_progress_bars()


def _describe_hub_error(exc: Exception, repo: str, filename: str, endpoint: str, command: str) -> str:
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo}/{filename}"
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if isinstance(exc, (LocalEntryNotFoundError, OfflineModeIsEnabled)) and is_offline():
        return (
            f"offline (HF_HUB_OFFLINE is set) and {where} is not in the Hugging Face cache "
            f"({hf_cache_dir()}); on a machine with network, unset HF_HUB_OFFLINE and run: {command}"
        )
    not_there = (GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError, RemoteEntryNotFoundError)
    if isinstance(exc, not_there):
        return f"{endpoint} has no {where} ({first}); check HF_ENDPOINT and the config's repo/file"
    if isinstance(exc, LocalEntryNotFoundError):
        cause = exc.__cause__ or exc
        reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        fix = f"check the network or HF_ENDPOINT, then run: {command}"
        return f"cannot reach {endpoint} for {where} ({reason}); {fix}"
    if isinstance(exc, HfHubHTTPError):
        return f"{endpoint}: {where}: {first}"
    if "Consistency check failed" in first:
        detail = first.removeprefix("Consistency check failed: ").rstrip(".")
        return f"{where}: {detail}; nothing was kept, run again: {command}"
    return f"{where}: {type(exc).__name__}: {first}; run again: {command}"


def hub_download(
    repo: str,
    filename: str,
    command: str,
    local_dir: Path | None = None,
    endpoint: str | None = None,
    force: bool = False,
    progress: bool = True,
    revision: str | None = None,
) -> tuple[Path, int | None, bool]:
    """(path, size the hub reports, whether this call transferred it) of one hub file.

    Offline, only the cache is consulted. Online, a metadata request (``dry_run``) first gives the
    hub's size, which the caller checks the file against, and whether the file is cached already.
    """
    from huggingface_hub import hf_hub_download

    endpoint = hub_endpoint(endpoint)
    shown = endpoint or _default_endpoint()
    offline = is_offline()
    kwargs: dict[str, Any] = {
        "repo_id": repo,
        "filename": filename,
        "revision": revision,
        "local_dir": local_dir,
        "endpoint": endpoint,
        "library_name": "adapt",
        "library_version": adapt.__version__,
    }
    try:
        if offline:
            return Path(hf_hub_download(**kwargs, local_files_only=True)), None, False
        info = hf_hub_download(**kwargs, force_download=force, dry_run=True)
        with _progress_bars(progress):
            path = hf_hub_download(**kwargs, force_download=force)
    except DownloadError:
        raise
    except Exception as exc:  # huggingface_hub and its HTTP client raise many types
        raise DownloadError(_describe_hub_error(exc, repo, filename, shown, command)) from None
    return Path(path), info.file_size, bool(info.will_download)


def _default_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


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
# Datasets


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
    command = f"python -m adapt.download {shlex.quote(str(c.get('id')))}"
    default_dir = cache_dir() / "datasets" / "odinw"
    if c.get("download_dir") and data_path(c["download_dir"]) != default_dir:
        command += f" --data-dir {shlex.quote(str(c['download_dir']))}"
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
    if missing and c.get("world"):  # generated, not downloaded: written on first use
        from adapt.data.world_tasks import ensure_dataset

        ensure_dataset(str(c["world"]), data_path(c["data_root"]))
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
    endpoint: str | None = None,
    progress: bool = True,
    keep_zip: bool = False,
    force: bool = False,
) -> Path:
    """Download and unpack a hub dataset (task config keys `hub_repo`, `hub_file`, `download_dir`)."""
    c = _as_dict(task_cfg)
    if not c.get("hub_file") or not c.get("hub_repo"):
        raise DownloadError(
            f"task {c.get('id')}: not a hub dataset (no hub_repo/hub_file); nothing to download"
        )
    data_root = data_path(c["data_root"])
    if not force and not missing_files(c):
        return data_root
    download_dir = data_path(c["download_dir"])
    name = Path(c["hub_file"]).stem
    staging = download_dir / f".{name}.hub"
    command = fetch_command(c) or f"python -m adapt.download {shlex.quote(str(c.get('id')))}"
    try:
        archive, _, _ = hub_download(
            str(c["hub_repo"]), str(c["hub_file"]), command, staging, endpoint, force, progress
        )
        extract_zip(archive, download_dir, name)
    finally:
        if not keep_zip:  # the zip and huggingface_hub's notes about it, also after a failure
            shutil.rmtree(staging, ignore_errors=True)
    return data_root


# ----------------------------------------------------------------------------------------------
# Checkpoints


def _checkpoint_spec(model_cfg: Mapping[str, Any] | DictConfig) -> dict[str, Any] | None:
    ckpt = _as_dict(model_cfg).get("checkpoint") or {}
    return ckpt if ckpt.get("file") else None


def checkpoint_command(model_cfg: Mapping[str, Any] | DictConfig) -> str:
    """The command that fetches (or repairs) a model's checkpoint."""
    c = _as_dict(model_cfg)
    return f"python -m adapt.download {shlex.quote(str(c.get('name') or c['checkpoint']['file']))}"


def checkpoint_path(model_cfg: Mapping[str, Any] | DictConfig) -> Path | None:
    """The model's checkpoint in the HF cache, or None (no official weights, or not fetched yet)."""
    from huggingface_hub import try_to_load_from_cache

    ckpt = _checkpoint_spec(model_cfg)
    if ckpt is None:
        return None
    found = try_to_load_from_cache(str(ckpt["repo"]), str(ckpt["file"]), revision=ckpt.get("revision"))
    return Path(found) if isinstance(found, str) else None


def _ledger_path(cache: str | os.PathLike[str] | None) -> Path:
    return cache_dir(cache) / LEDGER


def _read_ledger(cache: str | os.PathLike[str] | None) -> dict[str, dict[str, Any]]:
    import json

    try:
        data = json.loads(_ledger_path(cache).read_text())
    except (OSError, ValueError):
        return {}  # no ledger yet, or an unreadable one: every file is verified afresh
    return data if isinstance(data, dict) else {}


def verify_checkpoint(
    path: str | os.PathLike[str],
    ckpt: Mapping[str, Any],
    cache: str | os.PathLike[str] | None = None,
    hub_size: int | None = None,
    full: bool = False,
) -> str:
    """Check a checkpoint file and return its SHA-256; DownloadError says what is wrong with it.

    The hash is computed when the ledger has no record of the file or its size/mtime changed, or
    with ``full``; otherwise the recorded one is used, so a run start does not re-read gigabytes.
    """
    from adapt.model.safe_load import describe_bad_file

    path = Path(path)
    problem = describe_bad_file(path)
    if problem is not None:
        raise DownloadError(f"{path} is {problem}")
    real = Path(os.path.realpath(path))
    stat = real.stat()
    ledger = _read_ledger(cache)
    entry = ledger.get(str(real)) or {}
    name = ckpt.get("file")
    sizes = (
        ("the hub reports", hub_size),
        (f"the config pins ({name}: checkpoint.size)", ckpt.get("size")),
        ("was recorded when it was first verified", entry.get("size")),
    )
    for what, expected in sizes:
        if expected is not None and stat.st_size != int(expected):
            raise DownloadError(f"{path} has {stat.st_size} bytes but {expected} {what}")
    unchanged = entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns
    digest = entry["sha256"] if unchanged and not full and entry.get("sha256") else file_sha256(real)
    etag = real.name if real.parent.name == "blobs" and SHA256.match(real.name) else None
    hashes = (
        (f"the config pins ({name}: checkpoint.sha256)", (ckpt.get("sha256") or "").lower() or None),
        ("the hub's ETag says", etag),
        ("was recorded when it was first verified", entry.get("sha256")),
    )
    for what, expected in hashes:
        if expected is not None and digest != expected:
            raise DownloadError(f"{path} has SHA-256 {digest} but {expected} {what}")
    ledger[str(real)] = {
        "file": name,
        "repo": ckpt.get("repo"),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "sha256": digest,
        "verified": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        write_json(ledger, _ledger_path(cache))
    except OSError as exc:  # a read-only cache still verifies, it just cannot remember
        log.warning("cannot record the verified checkpoint in %s: %s", _ledger_path(cache), exc)
    return digest


def _remove_cached(path: Path) -> None:
    """Take a bad file out of the HF cache (snapshot link and blob), so nothing looks complete."""
    real = Path(os.path.realpath(path))
    path.unlink(missing_ok=True)
    real.unlink(missing_ok=True)


def fetch_checkpoint(
    model_cfg: Mapping[str, Any] | DictConfig,
    cache: str | os.PathLike[str] | None = None,
    endpoint: str | None = None,
    progress: bool = True,
    force: bool = False,
) -> Path | None:
    """Fetch a model's checkpoint into the HF cache and verify it fully (config key `checkpoint`).

    A cached copy that fails verification is fetched again once; a fresh download that fails
    is removed from the cache before the error is raised.
    """
    ckpt = _checkpoint_spec(model_cfg)
    if ckpt is None:
        return None
    command = checkpoint_command(model_cfg)
    repo, filename = str(ckpt["repo"]), str(ckpt["file"])
    for again in (False, True):
        path, hub_size, fresh = hub_download(
            repo, filename, command, None, endpoint, force or again, progress, ckpt.get("revision")
        )
        try:
            verify_checkpoint(path, ckpt, cache, hub_size, full=True)
            return path
        except DownloadError as exc:
            if fresh:
                _remove_cached(path)
                raise DownloadError(f"{exc}; it was removed from the Hugging Face cache") from None
            if is_offline():
                raise DownloadError(f"{exc}; with network, {command} fetches it again") from None
            log.warning("%s; fetching it again", exc)
    raise AssertionError("unreachable")  # pragma: no cover - the forced attempt is always fresh


def packaged_checkpoint(model_cfg: Mapping[str, Any] | DictConfig) -> Path:
    """A checkpoint shipped inside adapt (``file: package:<path>``), checked against its pinned SHA-256.

    Nothing to download or cache: the file is part of the installed package, so a mismatch means
    a damaged installation, and the fix is to reinstall.
    """
    c = _as_dict(model_cfg)
    ckpt = c["checkpoint"]
    path = data_path(ckpt["file"])
    pinned = (ckpt.get("sha256") or "").lower() or None
    if not path.is_file():
        raise MissingDataError(
            f"model {c.get('name')}: packaged checkpoint {path} is missing; reinstall adapt"
        )
    digest = file_sha256(path)
    if pinned is not None and digest != pinned:
        raise DownloadError(
            f"model {c.get('name')}: packaged checkpoint {path} has SHA-256 {digest} but the config pins "
            f"{pinned} ({c.get('name')}: checkpoint.sha256); reinstall adapt"
        )
    return path


def require_checkpoint(
    model_cfg: Mapping[str, Any] | DictConfig,
    cache: str | os.PathLike[str] | None = None,
    download: bool = False,
    progress: bool = True,
) -> Path | None:
    """The model's verified checkpoint (None: no official weights), or MissingDataError with the fix."""
    c = _as_dict(model_cfg)
    ckpt = _checkpoint_spec(c)
    if ckpt is None:
        return None
    if str(ckpt["file"]).startswith(PACKAGE_PREFIX):
        return packaged_checkpoint(c)
    command = checkpoint_command(c)
    path = checkpoint_path(c)
    reason = ""
    if path is not None:
        try:
            verify_checkpoint(path, ckpt, cache)
            return path
        except DownloadError as exc:
            reason = f" ({exc})"
    if download:
        try:
            return fetch_checkpoint(c, cache, progress=progress)
        except DownloadError as exc:
            reason = f" (download failed: {exc})"
    what = "unusable checkpoint" if path is not None and not download else "missing checkpoint"
    raise MissingDataError(
        f"model {c.get('name')}: {what}{reason}:\n  {ckpt['repo']}/{ckpt['file']} in the Hugging Face cache "
        f"{hf_cache_dir()}\nFetch it with:\n  {command}"
    )


def load_config(group: str, option: str, overrides: Sequence[str] = ()) -> DictConfig:
    """The ``conf/<group>/<option>.yaml`` node of the composed job config (as the job would see it)."""
    from adapt.config import compose_config

    cfg = compose_config([f"{group}={option}", *overrides])
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
    parser.add_argument("--cache-dir", help="adapt's cache root (default: $ADAPT_CACHE or ~/.cache/adapt)")
    parser.add_argument("--data-dir", help="where ODinW is unpacked (default: <cache>/datasets/odinw)")
    parser.add_argument("--endpoint", help="hub endpoint (default: $HF_ENDPOINT or https://huggingface.co)")
    parser.add_argument("--keep-zip", action="store_true", help="keep the downloaded archives")
    parser.add_argument("--force", action="store_true", help="download again even if the file is present")
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
                if cfg.get("world"):  # generated on this machine, nothing to download
                    print(f"{name}: {require_dataset(cfg)}")
                    continue
                root = fetch_dataset(cfg, args.endpoint, not args.no_progress, args.keep_zip, args.force)
                require_dataset(cfg)
                print(f"{name}: {root}")
            elif name in model_names():
                model_cfg = model_config(name)
                if str((model_cfg.get("checkpoint") or {}).get("file")).startswith(PACKAGE_PREFIX):
                    print(f"{name}: {packaged_checkpoint(model_cfg)} (shipped with adapt)")
                    continue
                path = fetch_checkpoint(
                    model_cfg, args.cache_dir, args.endpoint, not args.no_progress, args.force
                )
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
