"""adapt.download without network: a local HTTP server on 127.0.0.1 stands in for the hub."""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
import time
import zipfile
from pathlib import Path

import pytest

from adapt.data import build_task
from adapt.download import (
    DEFAULT_HUB_URL,
    DownloadError,
    MissingDataError,
    extract_zip,
    fetch,
    file_url,
    load_config,
    main,
    require_checkpoint,
    require_dataset,
)
from tests.data.conftest import random_images, write_coco

MAX_REQUESTS = 40


class Hub(http.server.ThreadingHTTPServer):
    """Serves `files` with Range support; `drop_first` cuts the first response of a path short."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.files: dict[str, bytes] = {}
        self.redirects: dict[str, tuple[str, dict[str, str]]] = {}
        self.drop_first: set[str] = set()
        self.ignore_range = False
        self.log: list[tuple[str, str | None]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(http.server.BaseHTTPRequestHandler):
    server: Hub
    timeout = 5

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        hub = self.server
        hub.log.append((self.path, self.headers.get("Range")))
        assert len(hub.log) <= MAX_REQUESTS, "too many requests"
        if self.path in hub.redirects:
            target, headers = hub.redirects[self.path]
            self.send_response(302)
            self.send_header("Location", target)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = hub.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and not hub.ignore_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        chunk = body[start:]
        self.send_header("Content-Length", str(len(chunk)))
        self.end_headers()
        if self.path in hub.drop_first:
            hub.drop_first.discard(self.path)
            chunk = chunk[: len(chunk) // 3]
            self.close_connection = True
        self.wfile.write(chunk)


@pytest.fixture
def hub(monkeypatch, tmp_path):
    server = Hub()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    monkeypatch.setenv("ADAPT_HUB_URL", server.url)
    monkeypatch.setenv("ADAPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ADAPT_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


PAYLOAD = bytes(range(256)) * 4000  # ~1 MB: several read chunks


def test_fetch_follows_redirect_and_checks_hub_sha256(hub, tmp_path):
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    hub.files["/cdn/w.pth"] = PAYLOAD
    hub.redirects["/w.pth"] = (
        "/cdn/w.pth",
        {"X-Linked-Etag": f'"{digest}"', "X-Linked-Size": str(len(PAYLOAD))},
    )
    dest = fetch(f"{hub.url}/w.pth", tmp_path / "w.pth", progress=False)
    assert dest.read_bytes() == PAYLOAD and not (tmp_path / "w.pth.part").exists()
    # present and trusted: no new request
    n = len(hub.log)
    fetch(f"{hub.url}/w.pth", dest, progress=False)
    assert len(hub.log) == n


def test_fetch_resumes_a_partial_file_with_range(hub, tmp_path):
    hub.files["/w.pth"] = PAYLOAD
    (tmp_path / "w.pth.part").write_bytes(PAYLOAD[:1000])
    fetch(f"{hub.url}/w.pth", tmp_path / "w.pth", progress=False)
    assert hub.log == [("/w.pth", "bytes=1000-")]
    assert (tmp_path / "w.pth").read_bytes() == PAYLOAD


def test_fetch_resumes_after_a_dropped_connection(hub, tmp_path):
    hub.files["/w.pth"] = PAYLOAD
    hub.drop_first.add("/w.pth")
    fetch(f"{hub.url}/w.pth", tmp_path / "w.pth", sha256=hashlib.sha256(PAYLOAD).hexdigest(), progress=False)
    assert (tmp_path / "w.pth").read_bytes() == PAYLOAD
    assert hub.log[0] == ("/w.pth", None) and hub.log[1][1] == f"bytes={len(PAYLOAD) // 3}-"


def test_fetch_restarts_when_the_server_ignores_range(hub, tmp_path):
    hub.files["/w.pth"] = PAYLOAD
    hub.ignore_range = True
    (tmp_path / "w.pth.part").write_bytes(b"stale bytes")
    fetch(f"{hub.url}/w.pth", tmp_path / "w.pth", progress=False)
    assert (tmp_path / "w.pth").read_bytes() == PAYLOAD


def test_checksum_mismatch_deletes_the_partial_file(hub, tmp_path):
    hub.files["/w.pth"] = PAYLOAD
    with pytest.raises(DownloadError, match=r"SHA-256 .* does not match"):
        fetch(f"{hub.url}/w.pth", tmp_path / "w.pth", sha256="0" * 64, progress=False)
    assert not (tmp_path / "w.pth").exists() and not (tmp_path / "w.pth.part").exists()


def test_http_error_names_the_url(hub, tmp_path):
    with pytest.raises(DownloadError, match=r"/missing.zip: HTTP 404"):
        fetch(f"{hub.url}/missing.zip", tmp_path / "m.zip", progress=False)


def test_offline_and_unreachable_fail_fast(hub, tmp_path, monkeypatch):
    hub.files["/w.pth"] = PAYLOAD
    monkeypatch.setenv("ADAPT_OFFLINE", "1")
    with pytest.raises(DownloadError, match="offline"):
        fetch(f"{hub.url}/w.pth", tmp_path / "w.pth", progress=False)
    assert hub.log == []
    monkeypatch.delenv("ADAPT_OFFLINE")
    closed = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    port = closed.server_address[1]
    closed.server_close()  # nothing listens there any more
    start = time.monotonic()
    with pytest.raises(DownloadError, match="cannot reach"):
        fetch(f"http://127.0.0.1:{port}/w.pth", tmp_path / "w.pth", progress=False)
    assert time.monotonic() - start < 5


def test_hub_url_override_applies_to_configured_urls(monkeypatch):
    monkeypatch.setenv("ADAPT_HUB_URL", "http://127.0.0.1:9/hub/")
    assert file_url("a.pth", f"{DEFAULT_HUB_URL}/a.pth") == "http://127.0.0.1:9/hub/a.pth"
    assert file_url("odinw_35/Aquarium.zip") == "http://127.0.0.1:9/hub/odinw_35/Aquarium.zip"
    assert file_url("a.pth", "https://elsewhere.org/a.pth") == "https://elsewhere.org/a.pth"


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


def test_download_cli_fetches_and_unpacks_an_odinw_dataset(hub, tmp_path, capsys):
    hub.files["/odinw_35/Raccoon.zip"] = _raccoon_zip(tmp_path)
    cfg = load_config("task", "odinw/raccoon")
    with pytest.raises(MissingDataError) as info:
        require_dataset(cfg)
    assert "python -m adapt.download odinw/raccoon" in str(info.value)
    assert main(["odinw/raccoon", "--no-progress"]) == 0
    odinw = tmp_path / "cache" / "datasets" / "odinw"
    assert sorted(p.name for p in odinw.iterdir()) == ["Raccoon"]  # no zip, no temp folder left
    root = require_dataset(cfg)
    assert root == odinw / "Raccoon" / "Raccoon.v2-raw.coco"
    task = build_task(cfg)
    assert task.class_names == ["raccoon"] and len(task.dataset("test")) == 6
    n = len(hub.log)
    assert main(["odinw/raccoon", "--no-progress"]) == 0  # already there: no request
    assert len(hub.log) == n


def test_offline_run_reports_missing_data_and_the_command(hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = load_config("task", "odinw/pothole")
    with pytest.raises(MissingDataError) as info:
        require_dataset(cfg, download=True, progress=False)
    message = str(info.value)
    assert "task odinw/pothole: missing data (download failed: offline" in message
    assert "datasets/odinw/pothole" in message and "python -m adapt.download odinw/pothole" in message
    assert hub.log == []


def test_missing_coco_data_points_at_the_config_keys(tmp_path):
    cfg = {"id": "coco", "data_root": str(tmp_path / "nowhere"), "train_json": "a.json"}
    with pytest.raises(MissingDataError, match=r"(?s)nowhere.*task.data_root"):
        require_dataset(cfg)


def test_checkpoint_require_and_fetch(hub, tmp_path):
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    hub.files["/glip_tiny.pth"] = PAYLOAD
    model = {
        "name": "glip_t",
        "checkpoint": {"file": "glip_tiny.pth", "url": f"{DEFAULT_HUB_URL}/glip_tiny.pth", "sha256": digest},
    }
    with pytest.raises(
        MissingDataError, match=r"(?s)checkpoints/glip_tiny.pth.*python -m adapt.download glip_t"
    ):
        require_checkpoint(model)
    path = require_checkpoint(model, download=True, progress=False)
    assert path == tmp_path / "cache" / "checkpoints" / "glip_tiny.pth" and path.read_bytes() == PAYLOAD
    assert require_checkpoint(model) == path
    other = tmp_path / "elsewhere"
    with pytest.raises(MissingDataError, match=f"--cache-dir '{other}'"):
        require_checkpoint(model, cache=other)
    assert require_checkpoint({"name": "glip_mini", "checkpoint": {"file": None}}) is None


def test_cli_models_and_unknown_names(hub, capsys):
    assert main(["glip_mini", "--no-progress"]) == 0
    assert "nothing to download" in capsys.readouterr().out
    assert main(["odinw/nope"]) == 1
    assert "unknown" in capsys.readouterr().err


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
