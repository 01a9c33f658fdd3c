"""The shipped fixture (tests/fixtures/deploy) is what scripts/make_deploy_fixture.py makes today.

Slow: it traces the fixture's graph. When adapt's model, export format or exporter changes what an
export or a deployed file holds, this fails; rerun the script and commit its output.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import SHIPPED_EXPORT, SHIPPED_ONNX, fixture_script

from adapt.deploy.runtime import DeployedDetector
from adapt.export import load_export

# What may differ between two builds of the same fixture: library versions and the verification's
# rounding-level numbers (which the default tests bound), and the export files' bytes, compared below.
VOLATILE = ("adapt_version", "exported_with", "verification")


@pytest.mark.slow
def test_the_shipped_fixture_is_what_the_script_makes(tmp_path):
    torch.set_num_threads(2)
    export, onnx_file = fixture_script.build(tmp_path / "fixture")

    fresh, shipped = load_export(export), load_export(SHIPPED_EXPORT)
    assert fresh.config == shipped.config
    assert sorted(fresh.tensors) == sorted(shipped.tensors)
    for name, tensor in fresh.tensors.items():
        torch.testing.assert_close(tensor, shipped.tensors[name], rtol=0, atol=1e-6)

    want, got = DeployedDetector(SHIPPED_ONNX).meta, DeployedDetector(onnx_file).meta
    for meta in (want, got):
        for key in VOLATILE:
            meta.pop(key)
        meta["source"].pop("files")
    assert got == want

    # the two graphs compute the same outputs, at the probe's size and at another one, batched
    sessions = [
        ort.InferenceSession(str(f), providers=["CPUExecutionProvider"]) for f in (SHIPPED_ONNX, onnx_file)
    ]
    g = torch.Generator().manual_seed(2)
    for shape in [(1, 3, 256, 288), (2, 3, 320, 416)]:
        images = torch.randn(shape, generator=g).numpy()
        a, b = (s.run(None, {"images": images}) for s in sessions)
        for x, y in zip(a, b, strict=True):
            np.testing.assert_allclose(x, y, rtol=0, atol=1e-5)
