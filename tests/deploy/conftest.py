"""Deploy tests: a shipped deployed detector by default, fresh exports of every mode when slow.

The default tests run on ``tests/fixtures/deploy`` (a small glip_mini-architecture prompt export
and its ``detector.onnx``, written by ``scripts/make_deploy_fixture.py``): tracing a GLIP for ONNX
costs a minute or more of CPU, which the default suite cannot spend. The ``slow`` tests make
exports the way a training run makes them (``make_export``, the script's recipe), from the oracle
fixture's weights with each mode's trainable tensors moved (seeded), and export them: the first
costs one trace of the mini graph, the others reuse it with their own weights (adapt.deploy.export).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import torch

import adapt

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "make_deploy_fixture", ROOT / "scripts" / "make_deploy_fixture.py"
)
assert _spec is not None and _spec.loader is not None
fixture_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixture_script)

CHECKPOINT: Path = fixture_script.ORACLE_CHECKPOINT
CLASSES: tuple[str, ...] = fixture_script.CLASSES
DEMO_SIZES: dict[str, int] = fixture_script.DEMO_SIZES
MODES = ("prompt", "linear", "full", "lora")
make_export = fixture_script.make_export
mini_arch = fixture_script.mini_arch
# The shipped fixture: a prompt export, the file `python -m adapt.deploy export` made of it, adapt's
# eager outputs on a reference batch and the manifest (versions, SHA-256s).
SHIPPED = fixture_script.OUT
SHIPPED_EXPORT = SHIPPED / fixture_script.EXPORT_DIR
SHIPPED_ONNX = SHIPPED / fixture_script.ONNX_FILE
SHIPPED_REFERENCE = SHIPPED / fixture_script.REFERENCE_FILE
SHIPPED_MANIFEST = SHIPPED / fixture_script.MANIFEST_FILE
# What a failing fixture check tells the reader to do.
REGENERATE = (
    f"rebuild it with `{fixture_script.REGENERATE}` (about two minutes of CPU: one trace) and commit "
    "tests/fixtures/deploy"
)
DEMO = Path(adapt.__file__).parent / "data" / "demo"
# The demo task's test split (the fixture's sizes are the demo budget's test sizes).
DEMO_TEST_IMAGES = [
    str(DEMO / "images" / im["file_name"])
    for im in json.loads((DEMO / "annotations" / "test.json").read_text())["images"]
]


@pytest.fixture(scope="session")
def shipped() -> tuple[list[str], Path]:
    """(adapt.predict's source flags, .onnx) of the shipped fixture."""
    assert SHIPPED_ONNX.is_file(), f"{SHIPPED_ONNX} missing: {REGENERATE}"
    return ["--prompt", str(SHIPPED_EXPORT)], SHIPPED_ONNX


@pytest.fixture(scope="session")
def shipped_detector(shipped: tuple[list[str], Path]) -> Any:
    """One onnxruntime session of the shipped file for the default tests (each load optimises the
    graph again; its metadata is read, not changed)."""
    from adapt.deploy.runtime import DeployedDetector

    return DeployedDetector(shipped[1])


@pytest.fixture(scope="session")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[list[str], Path]]:
    """Per source ("prompt", "linear", "full", "lora", "classes"): (adapt.predict's source flags, .onnx).

    Fresh exports (a trace): for ``slow`` tests only."""
    from adapt.deploy.__main__ import main

    root = tmp_path_factory.mktemp("deploy")
    torch.set_num_threads(2)
    files: dict[str, tuple[list[str], Path]] = {}
    for mode in MODES:
        export = make_export(root / mode / "export", mode)
        onnx_file = root / f"{mode}.onnx"
        assert main(["export", str(export), "--checkpoint", str(CHECKPOINT), "--out", str(onnx_file)]) == 0
        files[mode] = (["--prompt", str(export), "--checkpoint", str(CHECKPOINT)], onnx_file)
    flags = [
        "--classes", ",".join(CLASSES), "--model", "glip_mini", "--checkpoint", str(CHECKPOINT),
        "--min-size", str(DEMO_SIZES["min_size_test"]), "--max-size", str(DEMO_SIZES["max_size_test"]),
    ]  # fmt: skip
    onnx_file = root / "classes.onnx"
    assert main(["export", *flags, "--out", str(onnx_file)]) == 0
    files["classes"] = (flags, onnx_file)
    return files


def match_detections(
    want: dict, got: dict, score_tol: float = 1e-4, box_tol: float = 0.1
) -> dict[str, float]:
    """Pair two detections.json files' detections one to one (same image and label, scores within
    ``score_tol``, xywh boxes within ``box_tol`` px); returns the largest differences seen.

    Order is not compared: detections with equal scores may come in either order."""
    assert [i["file_name"] for i in got["images"]] == [i["file_name"] for i in want["images"]]
    assert got["categories"] == want["categories"]
    worst = {"score": 0.0, "box": 0.0, "detections": 0}
    for image in want["images"]:
        a = [d for d in want["annotations"] if d["image_id"] == image["id"]]
        b = [d for d in got["annotations"] if d["image_id"] == image["id"]]
        assert len(a) == len(b), (image["file_name"], len(a), len(b))
        assert sorted(d["category_id"] for d in a) == sorted(d["category_id"] for d in b)
        free = list(b)
        for d in sorted(a, key=lambda d: -d["score"]):
            options = [
                (
                    max(abs(u - v) for u, v in zip(d["bbox"], e["bbox"], strict=True)),
                    abs(d["score"] - e["score"]),
                    k,
                )
                for k, e in enumerate(free)
                if e["category_id"] == d["category_id"] and abs(d["score"] - e["score"]) <= score_tol
            ]
            assert options, f"{image['file_name']}: no match for {d}"
            box, score, k = min(options)
            assert box <= box_tol, f"{image['file_name']}: {d} is {box} px from its match {free[k]}"
            worst["score"], worst["box"] = max(worst["score"], score), max(worst["box"], box)
            free.pop(k)
        worst["detections"] += len(a)
    return worst
