"""The deployed detector equals adapt: `python -m adapt.deploy predict` gives `python -m adapt.predict`'s
detections (same count and labels, scores within 1e-4, boxes within 0.1 px) on the demo's test
images: by default for the shipped fixture (tests/fixtures/deploy), and, slow, for fresh exports
of every mode and a plain class list; and the graph is exact at any size (slow)."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from adapt.deploy import deform
from adapt.deploy.__main__ import main as deploy
from adapt.deploy.export import TOLERANCE
from adapt.deploy.graph import DeployedGLIP
from adapt.deploy.runtime import DeployedDetector
from adapt.deploy.source import from_detector
from adapt.detector import Detector
from adapt.digest import file_sha256
from adapt.model import GLIPConfig, build_glip, load_checkpoint
from adapt.predict import main as predict
from tests.deploy.conftest import (
    CHECKPOINT,
    CLASSES,
    DEMO_TEST_IMAGES,
    SHIPPED_EXPORT,
    match_detections,
    mini_arch,
)

# The largest differences seen, per source (printed with -s; the README of benchmarks quotes them).
MAXIMA: dict[str, dict[str, float]] = {}


def _compare(flags: list[str], onnx_file, tmp_path, source: str) -> dict:
    assert predict([*DEMO_TEST_IMAGES, *flags, "--out", str(tmp_path / "adapt")]) == 0
    assert deploy(["predict", str(onnx_file), *DEMO_TEST_IMAGES, "--out", str(tmp_path / "onnx")]) == 0
    want = json.loads((tmp_path / "adapt" / "detections.json").read_text())
    got = json.loads((tmp_path / "onnx" / "detections.json").read_text())
    assert want["annotations"], "the comparison needs detections"
    MAXIMA[source] = match_detections(want, got)
    print(source, MAXIMA[source])
    for name in DEMO_TEST_IMAGES:  # drawn like adapt.predict draws
        assert (tmp_path / "onnx" / name.rsplit("/", 1)[-1]).is_file()
    return want


def test_shipped_detector_equals_adapt_predict(shipped, shipped_detector, tmp_path):
    """The whole post-processing runs: score threshold 0, so each image keeps the per-image cap."""
    flags, onnx_file = shipped
    want = _compare(flags, onnx_file, tmp_path, "shipped")
    cap = shipped_detector.meta["inference"]["detections_per_image"]
    assert len(want["annotations"]) == cap * len(DEMO_TEST_IMAGES)


def test_the_shipped_file_records_what_the_runtime_needs(shipped_detector):
    meta = shipped_detector.meta
    assert meta["class_names"] == list(CLASSES) and meta["labels"] == [1, 2, 3]
    assert meta["label_to_tokens"]["2"] == [3, 4]  # "jellyfish": two word pieces
    assert meta["input"]["min_size_test"] == 320 and meta["input"]["max_size_test"] == 533
    assert meta["input"]["size_divisibility"] == 32
    assert meta["inference"]["score_threshold"] == 0.0 and meta["inference"]["detections_per_image"] == 100
    source = meta["source"]
    assert source["kind"] == "export" and source["mode"] == "prompt" and source["task"] == "demo"
    assert source["base_model"]["checkpoint"] == {"file": None, "sha256": None, "random_init_seed": 0}
    # the file was made from the export shipped beside it, file for file
    assert source["files"] == {name: file_sha256(SHIPPED_EXPORT / name) for name in source["files"]}
    assert len(source["files"]) == 2
    graph = meta["graph"]
    assert graph["height"]["min"] == 256 and graph["text_tokens"] == 8 and graph["num_classes"] == 3
    assert graph["deform_conv"] == deform.DEFAULT and graph["levels"] == 5
    check = meta["verification"]
    assert check["tolerance"] == TOLERANCE
    assert all(check["max_abs_diff"][k] <= TOLERANCE[k] for k in TOLERANCE)


@pytest.mark.slow
@pytest.mark.parametrize("source", ["prompt", "linear", "full", "lora", "classes"])
def test_deployed_detections_equal_adapt_predict(deployed, tmp_path, source):
    flags, onnx_file = deployed[source]
    _compare(flags, onnx_file, tmp_path, source)


@pytest.mark.slow
def test_the_file_records_what_the_runtime_needs(deployed):
    meta = DeployedDetector(deployed["lora"][1]).meta
    assert meta["class_names"] == list(CLASSES) and meta["labels"] == [1, 2, 3]
    assert meta["label_to_tokens"]["2"] == [3, 4]  # "jellyfish": two word pieces
    assert meta["input"]["min_size_test"] == 320 and meta["input"]["size_divisibility"] == 32
    assert meta["source"]["mode"] == "lora" and len(meta["source"]["files"]) == 3
    assert meta["source"]["base_model"]["checkpoint"]["file"] == CHECKPOINT.name
    assert meta["graph"]["height"]["min"] == 256 and meta["graph"]["text_tokens"] == 8
    assert max(meta["verification"]["max_abs_diff"].values()) < 1e-4


@pytest.mark.slow
def test_the_graph_is_exact_at_any_size_and_batch(deployed):
    """Dynamic batch, height and width: sizes whose Swin maps need window padding and sizes that do
    not, a batch of three; onnxruntime against adapt's eager model on the same padded input."""
    model = build_glip(GLIPConfig.from_dict(mini_arch()))
    load_checkpoint(model, CHECKPOINT)
    source = from_detector(Detector(model), CLASSES)
    graph = DeployedGLIP(source.model, source.text, source.label_to_tokens).eval()
    session = ort.InferenceSession(str(deployed["classes"][1]), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(1)
    for shape in [(1, 3, 448, 256), (3, 3, 288, 320), (2, 3, 256, 544)]:  # 448/4 and 224/4 are multiples of 7
        images = torch.randn(shape, generator=g)
        with torch.no_grad():
            want = [t.numpy() for t in graph(images)]
        got = session.run(None, {"images": images.numpy()})
        for a, b in zip(got, want, strict=True):
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, rtol=0, atol=2e-4)
