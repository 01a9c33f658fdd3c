"""The deployed runtime alone: numpy, Pillow and onnxruntime, nothing of adapt's training stack.

Its pre- and post-processing are adapt's, checked here without any graph: the resize rule and the
normalised, padded batch equal adapt's bit for bit, and the numpy post-processing equals
``adapt.model.postprocess.PostProcessor`` + ``Detector``'s merge and rescale on random head outputs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from adapt.data.transforms import Resize, ToTensor, resize_boxes, resize_shape
from adapt.deploy import postprocess
from adapt.deploy.runtime import read_image
from adapt.deploy.runtime import resize_shape as runtime_resize_shape
from adapt.model.anchors import AnchorGenerator
from adapt.model.box_coder import BoxCoder
from adapt.model.config import InputConfig
from adapt.model.postprocess import PostProcessor
from adapt.model.preprocess import batch_images
from tests.deploy.conftest import DEMO_TEST_IMAGES

BLOCKED = ("torch", "torchvision", "transformers", "omegaconf", "hydra", "lightning", "peft", "safetensors")
# A process in which these cannot be imported: None in sys.modules makes `import x` raise.
PRELUDE = "import sys\nfor name in {blocked!r}: sys.modules[name] = None\n"


def test_resize_rule_equals_adapts():
    sizes = [
        (320, 320),
        (400, 400),
        (480, 640),
        (1080, 1920),
        (1333, 200),
        (201, 1333),
        (799, 801),
        (7, 3000),
    ]
    for h, w in sizes:
        for min_size, max_size in [(800, 1333), (320, 533), (96, 128), (800, None)]:
            assert runtime_resize_shape(h, w, min_size, max_size) == resize_shape(h, w, min_size, max_size)


def test_preprocessed_batch_equals_adapts_bit_for_bit(shipped_detector):
    runtime = shipped_detector
    pils = [read_image(p) for p in DEMO_TEST_IMAGES[:2]]
    arrays = [runtime.preprocess(p) for p in pils]
    got = runtime.batch(arrays, ["a", "b"])
    tensors = [ToTensor()(Resize(320, 533)(p, {})[0], {})[0] for p in pils]
    want, _ = batch_images(tensors, InputConfig(min_size_test=320, max_size_test=533))
    assert got.shape == tuple(want.shape)
    assert np.array_equal(got, want.numpy())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_numpy_postprocessing_equals_adapts(seed):
    """Random head outputs with many near-ties, a pre-NMS cut and the detections cap; class 3 has no
    tokens (score 0 everywhere), as a class whose name did not fit the caption."""
    g = torch.Generator().manual_seed(seed)
    sizes = [(12, 16), (6, 8), (3, 4), (2, 2), (1, 1)]
    image_hw, original_hw = (90, 120), (301, 401)
    label_to_tokens = {1: [1], 2: [3, 4], 4: [6]}
    proc = PostProcessor(score_threshold=0.3, pre_nms_top_n=60, nms_threshold=0.6, detections_per_image=40)
    bbox = [torch.randn(1, 4, h, w, generator=g) for h, w in sizes]
    ctr = [torch.randn(1, 1, h, w, generator=g) for h, w in sizes]
    logits = [(torch.randn(1, h * w, 8, generator=g) * 2).round(decimals=1) for h, w in sizes]  # ties
    anchors = AnchorGenerator()(sizes)
    want = proc(bbox, ctr, logits, anchors, [image_hw], label_to_tokens)[0]
    keep = want["scores"].argsort(descending=True, stable=True)[:40]
    want_boxes = resize_boxes(want["boxes"][keep], image_hw, original_hw).numpy()

    levels = []
    for b, c, lg, (h, w) in zip(bbox, ctr, logits, sizes, strict=True):
        probs = lg.sigmoid()[0]
        cls = torch.zeros(h * w, 4)
        for label, tokens in label_to_tokens.items():
            cls[:, label - 1] = probs[:, tokens].mean(-1)
        levels.append(
            (b[0].permute(1, 2, 0).numpy(), c[0, 0].sigmoid().numpy(), cls.reshape(h, w, 4).numpy())
        )
    settings = postprocess.Settings(
        0.3,
        60,
        0.6,
        40,
        (64, 128, 256, 512, 1024),
        (8, 16, 32, 64, 128),
        (10, 10, 5, 5),
        BoxCoder().bbox_xform_clip,
    )
    boxes, scores, labels = postprocess.detect(levels, image_hw, original_hw, settings)
    assert len(scores) == len(keep) > 10
    assert np.array_equal(np.sort(labels), np.sort(want["labels"][keep].numpy()))
    assert np.abs(np.sort(scores) - np.sort(want["scores"][keep].numpy())).max() <= 1e-6
    order_a = np.lexsort((boxes[:, 0], labels, -scores))
    order_b = np.lexsort((want_boxes[:, 0], want["labels"][keep].numpy(), -want["scores"][keep].numpy()))
    assert np.abs(boxes[order_a] - want_boxes[order_b]).max() <= 1e-3


def test_predict_runs_where_torch_cannot_be_imported(shipped, tmp_path):
    """`python -m adapt.deploy predict` where torch & co. fail to import: the file it writes in-process."""
    onnx_file = shipped[1]
    images = DEMO_TEST_IMAGES[:2]
    code = PRELUDE.format(blocked=BLOCKED) + (
        "import runpy\n"
        "sys.argv = ['adapt.deploy', 'predict', *sys.argv[1:]]\n"
        "runpy.run_module('adapt.deploy', run_name='__main__')\n"
    )
    out = tmp_path / "no_torch"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(onnx_file), *images, "--out", str(out)],
        capture_output=True, text=True, cwd=Path(__file__).parents[2], timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    from adapt.deploy.__main__ import main

    assert main(["predict", str(onnx_file), *images, "--out", str(tmp_path / "here")]) == 0
    got = json.loads((out / "detections.json").read_text())
    assert got == json.loads((tmp_path / "here" / "detections.json").read_text())
    assert got["annotations"]
    # and the prelude does block them
    check = subprocess.run(
        [sys.executable, "-c", PRELUDE.format(blocked=BLOCKED) + "import torch"],
        capture_output=True,
        text=True,
    )
    assert check.returncode != 0 and "ModuleNotFoundError" in check.stderr
