"""Atomic writes: a failed write leaves the old file and no temporary behind."""

from __future__ import annotations

import json
import os
import stat

import pytest

from adapt.atomic import atomic_path, atomic_write, write_json, write_text


def test_write_json_round_trips_and_leaves_no_temporary(tmp_path):
    path = write_json({"a": 1, "p": tmp_path}, tmp_path / "sub" / "results.json")
    assert json.loads(path.read_text()) == {"a": 1, "p": str(tmp_path)}
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]


def test_failed_write_keeps_the_old_file(tmp_path):
    path = write_text(tmp_path / "results.json", "old")
    with pytest.raises(RuntimeError), atomic_write(path) as f:
        f.write("half")
        raise RuntimeError("interrupted")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_atomic_path_gives_the_usual_file_mode(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "w.bin") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "w.bin").stat().st_mode) == 0o644
