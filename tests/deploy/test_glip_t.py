"""At GLIP-T's size (random weights, no checkpoint needed): the deployed detector equals adapt's.

Slow: tracing GLIP-T for ONNX takes minutes of CPU. Random weights score every location near 0.01,
under the default 0.05 threshold, so the threshold is 0 and the whole post-processing runs (every
location a candidate, the pre-NMS cut, NMS, the 100-detection cut).
"""

from __future__ import annotations

import json

import pytest
import torch

from adapt.deploy.export import export_onnx
from adapt.deploy.runtime import DeployedDetector
from adapt.deploy.source import from_detector
from adapt.detector import Detector
from adapt.imagefiles import detections_coco
from adapt.model import GLIPConfig, build_glip
from adapt.model.config import model_config
from tests.deploy.conftest import DEMO_TEST_IMAGES, match_detections

CLASSES = ["fish", "jellyfish", "penguin", "puffin", "shark", "starfish", "stingray"]


@pytest.mark.slow
def test_glip_t_sized_detections_equal_adapts(tmp_path):
    torch.set_num_threads(2)
    cfg = GLIPConfig.from_dict(model_config("glip_t")["arch"])
    cfg.input.min_size_test, cfg.input.max_size_test = 480, 800  # a moderate size: 480 x 480 here
    cfg.inference.score_threshold = 0.0
    detector = Detector(build_glip(cfg, seed=0))
    source = from_detector(detector, CLASSES, identity={"kind": "classes", "model": "glip_t", "seed": 0})
    onnx_file = export_onnx(source, tmp_path / "glip_t.onnx")

    want = detections_coco(
        DEMO_TEST_IMAGES, detector.predict(DEMO_TEST_IMAGES, classes=CLASSES, batch_size=1), CLASSES
    )
    runtime = DeployedDetector(onnx_file)
    got = detections_coco(DEMO_TEST_IMAGES, runtime.predict(DEMO_TEST_IMAGES), runtime.class_names)
    assert len(want["annotations"]) == 100 * len(DEMO_TEST_IMAGES)
    worst = match_detections(json.loads(json.dumps(want)), got)
    print("glip_t", worst, runtime.meta["verification"])
