"""adapt.download through the real huggingface_hub.hf_hub_download against a fake hub on 127.0.0.1.

The fake endpoint speaks the part of the hub protocol hf_hub_download uses for a plain (non-xet)
file: HEAD and GET on /{repo}/resolve/{revision}/{file} with X-Repo-Commit, ETag/X-Linked-Etag,
X-Linked-Size and Content-Length, and Range requests answered with 206. It never sends X-Xet-Hash,
so the library takes its HTTP path even with hf_xet installed. CI exports HF_HUB_OFFLINE=1, which
huggingface_hub reads at import: every test sets both the variable and the library's constant.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import re
import threading
import zipfile
from pathlib import Path
from urllib.parse import unquote

import pytest
import torch
from huggingface_hub import constants as hf_constants

from adapt.data import build_task
from adapt.download import (
    DownloadError,
    MissingDataError,
    checkpoint_path,
    extract_zip,
    fetch_checkpoint,
    load_config,
    main,
    require_checkpoint,
    require_dataset,
)
from adapt.model.checkpoint import CheckpointError, read_state_dict
from tests.data.conftest import random_images, write_coco

REPO = "GLIPModel/GLIP"
COMMIT = "66ee3ae9a3b8cee0cf78f10ef5fc9a3725db02a1"
MAX_REQUESTS = 40
RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<file>[^?]+)$")


class FakeHub(http.server.ThreadingHTTPServer):
    """Hub files of one repo; knobs make it lie about sizes/hashes or cut a transfer short."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.files: dict[str, bytes] = {}
        self.etag: dict[str, str] = {}  # file -> ETag to announce instead of the true SHA-256
        self.size: dict[str, int] = {}  # file -> X-Linked-Size to announce instead of the true size
        self.cut_first: set[str] = set()  # files whose first GET stops after a third of the body
        self.log: list[dict[str, str | None]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def gets(self, file: str | None = None) -> list[dict[str, str | None]]:
        return [r for r in self.log if r["method"] == "GET" and (file is None or r["file"] == file)]


class Handler(http.server.BaseHTTPRequestHandler):
    server: FakeHub
    timeout = 5

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _resolve(self, method: str) -> tuple[str, bytes] | None:
        hub = self.server
        m = RESOLVE.match(self.path)
        file = unquote(m["file"]) if m else None
        hub.log.append(
            {
                "method": method,
                "file": file,
                "range": self.headers.get("Range"),
                "auth": self.headers.get("Authorization"),
            }
        )
        assert len(hub.log) <= MAX_REQUESTS, "too many requests"
        if m is None or m["repo"] != REPO or file not in hub.files:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("X-Error-Message", "Entry not found")
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        return file, hub.files[file]

    def _common(self, file: str, body: bytes) -> None:
        hub = self.server
        etag = hub.etag.get(file, hashlib.sha256(body).hexdigest())
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{etag}"')
        self.send_header("X-Linked-Etag", f'"{etag}"')
        self.send_header("X-Linked-Size", str(hub.size.get(file, len(body))))
        self.send_header("Accept-Ranges", "bytes")

    def do_HEAD(self) -> None:
        found = self._resolve("HEAD")
        if found is None:
            return
        file, body = found
        self.send_response(200)
        self._common(file, body)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()

    def do_GET(self) -> None:
        found = self._resolve("GET")
        if found is None:
            return
        file, body = found
        start = 0
        rng = self.headers.get("Range")
        if rng:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        chunk = body[start:]
        self._common(file, body)
        self.send_header("Content-Length", str(len(chunk)))
        self.end_headers()
        if file in self.server.cut_first:
            self.server.cut_first.discard(file)
            chunk = chunk[: len(chunk) // 3]
            self.close_connection = True
        self.wfile.write(chunk)


def _offline(monkeypatch, value: bool) -> None:
    if value:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("ADAPT_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", value)


@pytest.fixture
def hub(monkeypatch, tmp_path):
    server = FakeHub()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    watchdog = threading.Timer(120, server.shutdown)  # stops by itself if a test hangs
    watchdog.daemon = True
    watchdog.start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.delenv("ADAPT_HUB_URL", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("ADAPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    _offline(monkeypatch, False)
    yield server
    watchdog.cancel()
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def torch_archive(n: int = 300_000) -> bytes:
    """A real torch.save archive (about 1.2 MB for the default n)."""
    buffer = io.BytesIO()
    torch.save({"model": {"w": torch.arange(n, dtype=torch.float32)}}, buffer)
    return buffer.getvalue()


def model_cfg(file: str = "tiny.pth", **pins) -> dict:
    ckpt = {"repo": REPO, "file": file, "sha256": None, "size": None, **pins}
    return {"name": "glip_t", "checkpoint": ckpt}


def blobs(tmp_path: Path) -> list[str]:
    folder = tmp_path / "hf" / "models--GLIPModel--GLIP" / "blobs"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


# ----------------------------------------------------------------------------------------------
# Checkpoints


def test_checkpoint_goes_to_the_hf_cache_once_and_is_recorded(hub, tmp_path, monkeypatch):
    body = torch_archive()
    hub.files["tiny.pth"] = body
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token")
    cfg = model_cfg()
    with pytest.raises(
        MissingDataError, match=r"(?s)GLIPModel/GLIP/tiny\.pth.*python -m adapt\.download glip_t"
    ):
        require_checkpoint(cfg)
    path = require_checkpoint(cfg, download=True, progress=False)
    assert path.parent == tmp_path / "hf" / "models--GLIPModel--GLIP" / "snapshots" / COMMIT
    assert path.read_bytes() == body and len(hub.gets()) == 1
    assert {r["auth"] for r in hub.log} == {"Bearer hf_fake_token"}  # HF_TOKEN reaches the hub
    ledger = json.loads((tmp_path / "cache" / "verified_checkpoints.json").read_text())
    [entry] = ledger.values()
    assert entry["sha256"] == hashlib.sha256(body).hexdigest() and entry["size"] == len(body)
    # Present: a run finds it without any request, a fetch asks the hub but transfers nothing.
    n = len(hub.log)
    assert require_checkpoint(cfg) == path and len(hub.log) == n
    assert fetch_checkpoint(cfg, progress=False) == path and len(hub.gets()) == 1


def test_interrupted_transfer_is_resumed_with_a_range_request(hub, tmp_path, monkeypatch):
    """The library resumes from the last chunk it wrote; smaller chunks let a 1 MB file show it."""
    chunk = 1 << 16
    monkeypatch.setattr(hf_constants, "DOWNLOAD_CHUNK_SIZE", chunk)
    body = torch_archive()
    hub.files["tiny.pth"] = body
    hub.cut_first.add("tiny.pth")
    path = fetch_checkpoint(model_cfg(sha256=hashlib.sha256(body).hexdigest()), progress=False)
    assert path.read_bytes() == body
    first, second = hub.gets("tiny.pth")
    assert first["range"] is None
    resumed_at = int(second["range"].removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_at <= len(body) // 3 and resumed_at % chunk == 0
    assert read_state_dict(path)[0]["w"].shape == (300_000,)


def test_size_mismatch_leaves_nothing_that_looks_complete(hub, tmp_path):
    body = torch_archive()
    hub.files["tiny.pth"] = body
    hub.size["tiny.pth"] = len(body) + 100  # the hub announces more than it sends
    cfg = model_cfg()
    with pytest.raises(
        DownloadError, match=rf"tiny\.pth: file should be of size {len(body) + 100}.*nothing was kept"
    ):
        fetch_checkpoint(cfg, progress=False)
    assert blobs(tmp_path) == [] and checkpoint_path(cfg) is None


@pytest.mark.parametrize("lie", ["pinned", "etag"])
def test_checksum_mismatch_is_removed_from_the_cache(hub, tmp_path, lie):
    body = torch_archive()
    hub.files["tiny.pth"] = body
    if lie == "pinned":
        cfg, said = model_cfg(sha256="0" * 64), "the config pins"
    else:
        hub.etag["tiny.pth"] = "1" * 64
        cfg, said = model_cfg(), "the hub's ETag says"
    with pytest.raises(DownloadError) as info:
        fetch_checkpoint(cfg, progress=False)
    message = str(info.value)
    assert f"SHA-256 {hashlib.sha256(body).hexdigest()}" in message and said in message
    assert "removed from the Hugging Face cache" in message
    assert blobs(tmp_path) == [] and checkpoint_path(cfg) is None
    assert not (tmp_path / "cache" / "verified_checkpoints.json").exists()


def test_download_cli_refuses_an_html_page(hub, tmp_path, capsys):
    """The 31-byte page that used to pass as glip_t: the CLI fails and keeps nothing."""
    page = b"<!DOCTYPE html><html>40</html>\n"
    assert len(page) == 31
    hub.files["glip_tiny_model_o365_goldg_cc_sbu.pth"] = page
    assert main(["glip_t", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert (
        "is an HTML page (31 bytes), not a checkpoint" in err and "removed from the Hugging Face cache" in err
    )
    assert blobs(tmp_path) == []


DAMAGE = {
    # damage: (what becomes of the file, what the messages say it is)
    "html": (lambda body: b"<html><body>Sign in</body></html>", "is an HTML page"),
    "truncated": (lambda body: body[: len(body) // 2], "is a truncated torch archive"),
    "empty": (lambda body: b"", "is an empty file (0 bytes)"),
    # A flipped byte keeps the zip readable: only the recorded SHA-256 can tell.
    "same-size edit": (lambda body: body[:-1] + bytes([body[-1] ^ 1]), "has SHA-256"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_cached_checkpoint_is_refused_then_repaired(hub, tmp_path, damage):
    body = torch_archive()
    hub.files["tiny.pth"] = body
    cfg = model_cfg()
    path = fetch_checkpoint(cfg, progress=False)
    blob = path.resolve()
    blob.chmod(0o644)
    change, said = DAMAGE[damage]
    blob.write_bytes(change(body))
    with pytest.raises(MissingDataError) as info:
        require_checkpoint(cfg)
    message = str(info.value)
    assert "unusable checkpoint" in message and said in message
    assert "python -m adapt.download glip_t" in message
    if damage != "same-size edit":  # loading it directly says the same, never "weights_only=False"
        with pytest.raises(CheckpointError, match=re.escape(said)) as load_error:
            read_state_dict(path)
        assert "weights_only" not in str(load_error.value)
    # The fetch command repairs it: the bad copy is replaced by a fresh, verified download.
    assert fetch_checkpoint(cfg, progress=False) == path
    assert path.read_bytes() == body and len(hub.gets()) == 2
    assert require_checkpoint(cfg) == path


def test_offline_with_nothing_cached_names_the_fix(hub, tmp_path, monkeypatch):
    hub.files["tiny.pth"] = torch_archive()
    _offline(monkeypatch, True)
    with pytest.raises(MissingDataError) as info:
        require_checkpoint(model_cfg(), download=True, progress=False)
    message = str(info.value)
    assert (
        "offline (HF_HUB_OFFLINE is set) and GLIPModel/GLIP/tiny.pth is not in the Hugging Face cache"
        in message
    )
    assert "unset HF_HUB_OFFLINE and run: python -m adapt.download glip_t" in message
    assert hub.log == []


def test_offline_uses_a_cached_checkpoint(hub, tmp_path, monkeypatch):
    hub.files["tiny.pth"] = torch_archive()
    path = fetch_checkpoint(model_cfg(), progress=False)
    _offline(monkeypatch, True)
    n = len(hub.log)
    assert fetch_checkpoint(model_cfg(), progress=False) == path
    assert require_checkpoint(model_cfg(), download=True) == path and len(hub.log) == n


def test_missing_hub_file_and_retired_adapt_hub_url(hub, monkeypatch):
    with pytest.raises(DownloadError, match=r"has no GLIPModel/GLIP/nothing\.pth"):
        fetch_checkpoint(model_cfg("nothing.pth"), progress=False)
    monkeypatch.delenv("HF_ENDPOINT")
    monkeypatch.setenv("ADAPT_HUB_URL", hub.url)
    with pytest.raises(DownloadError, match="ADAPT_HUB_URL is no longer read: set HF_ENDPOINT"):
        fetch_checkpoint(model_cfg(), progress=False)


def test_models_without_weights_and_unknown_names(hub, capsys):
    assert require_checkpoint({"name": "glip_mini", "checkpoint": {"file": None}}) is None
    assert main(["glip_mini", "--no-progress"]) == 0
    assert "nothing to download" in capsys.readouterr().out
    assert main(["odinw/nope"]) == 1
    assert "unknown" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Datasets


def _raccoon_zip(tmp_path: Path) -> bytes:
    """A miniature of the hub's Raccoon.zip: Raccoon/Raccoon.v2-raw.coco/{train,valid,test}/..."""
    src = tmp_path / "zipsrc" / "Raccoon" / "Raccoon.v2-raw.coco"
    for split, seed in (("train", 0), ("valid", 1), ("test", 2)):
        write_coco(
            src / split, "annotations_without_background.json", random_images(6, 1, seed, split), ("raccoon",)
        )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for path in sorted((tmp_path / "zipsrc").rglob("*")):
            zf.write(path, path.relative_to(tmp_path / "zipsrc").as_posix())
    return buffer.getvalue()


def test_download_cli_fetches_and_unpacks_an_odinw_dataset(hub, tmp_path):
    hub.files["odinw_35/Raccoon.zip"] = _raccoon_zip(tmp_path)
    cfg = load_config("task", "odinw/raccoon")
    with pytest.raises(MissingDataError) as info:
        require_dataset(cfg)
    assert "python -m adapt.download odinw/raccoon" in str(info.value)
    assert main(["odinw/raccoon", "--no-progress"]) == 0
    odinw = tmp_path / "cache" / "datasets" / "odinw"
    assert sorted(p.name for p in odinw.iterdir()) == ["Raccoon"]  # no zip, no staging folder left
    root = require_dataset(cfg)
    assert root == odinw / "Raccoon" / "Raccoon.v2-raw.coco"
    task = build_task(cfg)
    assert task.class_names == ["raccoon"] and len(task.dataset("test")) == 6
    n = len(hub.log)
    assert main(["odinw/raccoon", "--no-progress"]) == 0  # already there: no request
    assert len(hub.log) == n
    assert main(["odinw/raccoon", "--no-progress", "--force", "--keep-zip"]) == 0
    assert (odinw / ".Raccoon.hub" / "odinw_35" / "Raccoon.zip").is_file() and len(hub.gets()) == 2


def test_offline_run_reports_missing_data_and_the_command(hub, monkeypatch):
    _offline(monkeypatch, True)
    cfg = load_config("task", "odinw/pothole")
    with pytest.raises(MissingDataError) as info:
        require_dataset(cfg, download=True, progress=False)
    message = str(info.value)
    assert "task odinw/pothole: missing data (download failed: offline (HF_HUB_OFFLINE is set)" in message
    assert "datasets/odinw/pothole" in message and "python -m adapt.download odinw/pothole" in message
    assert hub.log == []


def test_missing_coco_data_points_at_the_config_keys(tmp_path):
    cfg = {"id": "coco", "data_root": str(tmp_path / "nowhere"), "train_json": "a.json"}
    with pytest.raises(MissingDataError, match=r"(?s)nowhere.*task.data_root"):
        require_dataset(cfg)


def test_extract_refuses_unsafe_paths_and_bad_archives(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../escape.txt", "x")
    with pytest.raises(DownloadError, match="unsafe member path"):
        extract_zip(evil, tmp_path / "out", "evil")
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DownloadError, match=r"bad\.zip: not a valid zip archive"):
        extract_zip(bad, tmp_path / "out", "bad")
    assert not (tmp_path / "escape.txt").exists() and list((tmp_path / "out").iterdir()) == []
