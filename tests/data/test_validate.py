"""The pre-flight check: every split's annotations and every image decoded before the first step."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import adapt
from adapt.data import build_task
from adapt.data.errors import DataError
from adapt.data.validate import check_images
from tests.data.conftest import write_coco

DEMO = Path(adapt.__file__).parent / "data" / "demo"
pytestmark = pytest.mark.filterwarnings("ignore::adapt.data.errors.DataWarning")

TINY_INPUT = [  # as tests/train/train_helpers.py: every forward pass well under a second
    "model.arch.input.min_size_train=[96]",
    "model.arch.input.max_size_train=128",
    "model.arch.input.min_size_test=96",
    "model.arch.input.max_size_test=128",
]


def _photo(path: Path, size: tuple[int, int] = (160, 120), seed: int = 0) -> None:
    """A JPEG with real entropy-coded data (noise), so that a cut lands in the body, not the header."""
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)


def _cut(path: Path, keep: float = 0.7) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _task(tmp_path: Path):
    images = [{"file": f"{n}.jpg", "size": (160, 120), "boxes": [(1, 10, 10, 40, 40)]} for n in "abc"]
    write_coco(tmp_path, "train.json", images[:2])
    write_coco(tmp_path, "test.json", images)
    for i, n in enumerate("abc"):
        _photo(tmp_path / f"{n}.jpg", seed=i)
    return build_task(
        {"id": "t", "data_root": str(tmp_path), "train_json": "train.json", "test_json": "test.json"}
    )


def test_every_image_of_every_split_is_decoded_once(tmp_path):
    task = _task(tmp_path)
    splits = [task.dataset(s, transforms=None) for s in ("train", "val", "test")]  # val is test here
    report = check_images(splits)
    assert report.images == 3 and report.splits == ("train", "val", "test")


def test_a_truncated_jpeg_body_is_found_before_training(tmp_path):
    task = _task(tmp_path)
    _cut(tmp_path / "c.jpg")
    splits = [task.dataset(s, transforms=None) for s in ("train", "test")]  # the header still reads
    with pytest.raises(DataError) as info:
        check_images(splits)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'c.jpg'}: image is truncated or corrupt (image file is truncated")
    assert message.endswith(f"; it is listed in {tmp_path / 'test.json'} (test split)")


def test_corrupt_images_are_counted_in_one_sentence(tmp_path):
    task = _task(tmp_path)
    _cut(tmp_path / "a.jpg")
    png = tmp_path / "b.png"
    Image.open(tmp_path / "b.jpg").save(png)
    data = bytearray(png.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # a corrupt stream inside an intact file
    (tmp_path / "b.jpg").write_bytes(bytes(data))
    with pytest.raises(
        DataError, match=r"a\.jpg: image is truncated .* \(train split\) \(1 more images are unreadable"
    ):
        check_images([task.dataset("train", transforms=None)])


def _demo_copy(tmp_path: Path) -> Path:
    root = tmp_path / "demo"
    shutil.copytree(DEMO, root)
    return root


def _test_image(root: Path) -> Path:
    name = json.loads((root / "annotations" / "test.json").read_text())["images"][-1]["file_name"]
    return root / "images" / name


@pytest.mark.parametrize("broken", ["test_json", "test_image"])
def test_a_job_stops_before_its_first_step_on_a_broken_test_split(tmp_path, broken):
    from adapt.runs.job import run_job
    from tests.train.train_helpers import compose_job

    root = _demo_copy(tmp_path)
    if broken == "test_json":
        _cut(root / "annotations" / "test.json", keep=0.5)
        expected = rf"{root / 'annotations' / 'test.json'}: not valid JSON \("
    else:
        _cut(_test_image(root))
        expected = r"image is truncated or corrupt .*; it is listed in .*test\.json \(test split\)$"
    run_dir = tmp_path / "run"
    with pytest.raises(DataError, match=expected):
        run_job(compose_job(f"task.data_root={root}", "shots=1"), run_dir=run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "failed" and not results.get("val_history")  # no evaluation ran
    assert not (run_dir / "checkpoints").exists()  # not one training step


def test_adapt_run_names_the_corrupt_test_image_in_one_line(tmp_path):
    root = _demo_copy(tmp_path)
    image = _test_image(root)
    _cut(image)
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "adapt.run",
            f"task.data_root={root}",
            "trainer=debug",
            "logger=none",
            f"hydra.run.dir={tmp_path / 'run'}",
            *TINY_INPUT,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("adapt: error:")]
    assert line.startswith(f"adapt: error: {image}: image is truncated or corrupt (image file is truncated")
    assert line.endswith(f"it is listed in {root / 'annotations' / 'test.json'} (test split)")
    assert not (tmp_path / "run" / "checkpoints").exists()
