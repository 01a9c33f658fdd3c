"""The shipped fixture (tests/fixtures/deploy) is current, and onnxruntime runs it as adapt's eager model.

By default, in seconds: the fixture was made for this adapt (export format, deployed-file format and
graph versions in its ``fixture.json``), its files are the ones recorded (SHA-256), onnxruntime on
the shipped file gives adapt's recorded eager outputs on a batch of three images, and adapt's eager
model today still gives them (so a change to the model's code cannot leave the fixture behind
unnoticed). Slow: the script rebuilds the fixture and gets the same files.

Every failure about the fixture itself says how to rebuild it (``REGENERATE``).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from adapt.deploy import format as deploy_format
from adapt.deploy.export import GRAPH_VERSION, OPSET, TOLERANCE, reference_outputs
from adapt.deploy.runtime import DeployedDetector
from adapt.deploy.source import from_export
from adapt.digest import file_sha256
from adapt.export import FORMAT_VERSION, load_export
from tests.deploy.conftest import (
    REGENERATE,
    SHIPPED,
    SHIPPED_EXPORT,
    SHIPPED_MANIFEST,
    SHIPPED_ONNX,
    SHIPPED_REFERENCE,
    fixture_script,
)

KINDS = ("deltas", "centerness", "scores")


def _manifest() -> dict[str, Any]:
    assert SHIPPED_MANIFEST.is_file(), f"{SHIPPED_MANIFEST} missing: {REGENERATE}"
    return json.loads(SHIPPED_MANIFEST.read_text())


def _reference() -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """The reference images and adapt's recorded eager outputs (by output name)."""
    with np.load(SHIPPED_REFERENCE, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    images = [arrays.pop(f"image{k}") for k in range(len(fixture_script.REFERENCE_SIZES))]
    return images, arrays


def _worst(got: dict[str, np.ndarray], want: dict[str, np.ndarray], levels: int) -> dict[str, float]:
    """The largest absolute difference per output kind (deltas, centerness, scores), shapes equal."""
    assert list(got) == list(want)
    names = list(want)
    worst = {}
    for k, kind in enumerate(KINDS):
        diffs = []
        for name in names[k * levels : (k + 1) * levels]:
            assert got[name].shape == want[name].shape, (name, got[name].shape, want[name].shape)
            diffs.append(float(np.abs(got[name] - want[name]).max()))
        worst[kind] = max(diffs)
    return worst


def test_the_fixture_was_made_for_this_adapt(shipped_detector):
    manifest = _manifest()
    now = {
        "export_format_version": FORMAT_VERSION,
        "deploy_format_version": deploy_format.VERSION,
        "graph_version": GRAPH_VERSION,
        "opset": OPSET,
    }
    recorded = {key: manifest.get(key) for key in now}
    assert recorded == now, f"{SHIPPED} was made for {recorded}, this adapt writes {now}: {REGENERATE}"
    # and its files say the same
    meta = shipped_detector.meta
    assert meta["version"] == deploy_format.VERSION and meta["graph_version"] == GRAPH_VERSION
    assert meta["exported_with"]["opset"] == OPSET
    assert meta["source"]["export_format_version"] == FORMAT_VERSION == load_export(SHIPPED_EXPORT).version


def test_the_fixture_files_are_the_recorded_ones(shipped_detector):
    """Every file as the script wrote it (no edit, no git filter, no file left from an older build)."""
    recorded = _manifest()["files"]
    present = sorted(
        p.relative_to(SHIPPED).as_posix()
        for p in SHIPPED.rglob("*")
        if p.is_file() and p != SHIPPED_MANIFEST and "__pycache__" not in p.parts
    )
    listed = sorted(recorded)
    assert present == listed, f"{SHIPPED} holds {present}, fixture.json lists {listed}: {REGENERATE}"
    changed = [name for name, digest in recorded.items() if file_sha256(SHIPPED / name) != digest]
    assert not changed, f"{changed} in {SHIPPED} differ from the SHA-256 in fixture.json: {REGENERATE}"
    # the deployed file records the export beside it, file for file
    files = shipped_detector.meta["source"]["files"]
    assert files == {name: recorded[f"{fixture_script.EXPORT_DIR}/{name}"] for name in files}


def test_onnxruntime_equals_adapts_recorded_eager_outputs(shipped_detector):
    """The deployed runtime's batch (normalise, pad to 480 x 448, batch 3: not the traced size) through
    onnxruntime, against adapt's eager outputs recorded by the script, within the export's tolerance."""
    images, want = _reference()
    detector = shipped_detector
    batch = fixture_script.reference_batch(detector, images)
    assert batch.shape == (3, 3, 480, 448)
    outputs = detector.session.run(None, {detector.meta["graph"]["input"]: batch})
    got = dict(zip(detector.meta["graph"]["outputs"], outputs, strict=True))
    worst = _worst(got, want, detector.meta["graph"]["levels"])
    print("onnxruntime vs recorded eager", worst)
    assert all(worst[k] <= TOLERANCE[k] for k in KINDS), (worst, TOLERANCE)
    assert float(want["scores_0"].max()) > 0, "the reference scores are all zero: the check would be empty"


def test_adapts_eager_model_still_gives_the_recorded_outputs(shipped_detector):
    """adapt's model code today, on the shipped export, against what it gave when the fixture was
    made: a change to the model that moves its outputs makes the fixture stale."""
    images, want = _reference()
    detector = shipped_detector
    batch = torch.from_numpy(fixture_script.reference_batch(detector, images))
    torch.set_num_threads(2)
    outputs = reference_outputs(from_export(SHIPPED_EXPORT), batch)
    got = dict(zip(detector.meta["graph"]["outputs"], outputs, strict=True))
    worst = _worst(got, want, detector.meta["graph"]["levels"])
    print("eager today vs recorded eager", worst)
    assert all(worst[k] <= TOLERANCE[k] for k in KINDS), (
        f"adapt's eager model now differs from the outputs recorded in {SHIPPED_REFERENCE} by {worst} "
        f"(limits {TOLERANCE}): the model changed, so {REGENERATE}"
    )


@pytest.mark.slow
def test_the_script_rebuilds_the_shipped_fixture(tmp_path):
    """A rebuild (one trace) gives the same export and, with the library versions the fixture
    records, the same graph byte for byte (else the same outputs), the same metadata and reference."""
    torch.set_num_threads(2)
    folder = tmp_path / "fixture"
    fixture_script.build(folder)
    fresh, shipped = json.loads((folder / fixture_script.MANIFEST_FILE).read_text()), _manifest()
    print("rebuilt detector.onnx sha256", fresh["files"][fixture_script.ONNX_FILE])
    assert sorted(fresh["files"]) == sorted(shipped["files"]), REGENERATE
    same_libraries = fresh["made_with"] == shipped["made_with"]

    new, old = load_export(folder / fixture_script.EXPORT_DIR), load_export(SHIPPED_EXPORT)
    assert new.config == old.config and sorted(new.tensors) == sorted(old.tensors), REGENERATE
    for name, tensor in new.tensors.items():
        torch.testing.assert_close(tensor, old.tensors[name], rtol=0, atol=0 if same_libraries else 1e-6)

    # the metadata, less what depends on the machine or the libraries
    volatile = ("verification",) if same_libraries else ("verification", "adapt_version", "exported_with")
    metas = [DeployedDetector(f).meta for f in (SHIPPED_ONNX, folder / fixture_script.ONNX_FILE)]
    for meta in metas:
        for key in volatile:
            meta.pop(key)
        if not same_libraries:
            meta["source"].pop("files")
    assert metas[0] == metas[1], REGENERATE

    onnx_files = (SHIPPED_ONNX, folder / fixture_script.ONNX_FILE)
    if same_libraries:  # the trace is deterministic: the same graph and weights, byte for byte
        import onnx

        graphs = [onnx.load(str(f)).graph.SerializeToString() for f in onnx_files]
        assert graphs[0] == graphs[1], f"the script no longer traces the shipped graph: {REGENERATE}"
    images, reference = _reference()
    batch = fixture_script.reference_batch(DeployedDetector(SHIPPED_ONNX), images)
    sessions = [ort.InferenceSession(str(f), providers=["CPUExecutionProvider"]) for f in onnx_files]
    a, b = (s.run(None, {"images": batch}) for s in sessions)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-5)
    with np.load(folder / fixture_script.REFERENCE_FILE) as data:
        assert sorted(data.files) == sorted([*reference, *(f"image{k}" for k in range(len(images)))])
        for k, image in enumerate(images):
            assert np.array_equal(data[f"image{k}"], image)
        for name, array in reference.items():
            np.testing.assert_allclose(data[name], array, rtol=0, atol=1e-5)
