"""Bad input to adapt.deploy: one sentence naming the file or value, exit status 2, no traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from adapt.deploy.__main__ import main
from adapt.export import CONFIG_FILE
from tests.deploy.conftest import CHECKPOINT, DEMO_TEST_IMAGES, SHIPPED_EXPORT


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_a_damaged_onnx_file(shipped, tmp_path, capsys):
    data = shipped[1].read_bytes()
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(data[: len(data) // 2])
    assert main(["predict", str(damaged), DEMO_TEST_IMAGES[0], "--out", str(tmp_path / "out")]) == 2
    err = _one_line_error(capsys)
    assert f"{damaged}: not a readable ONNX model" in err and "export it again" in err


def test_an_onnx_file_adapt_did_not_write(tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    other = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]), str(other))
    assert main(["predict", str(other), DEMO_TEST_IMAGES[0], "--out", str(tmp_path / "out")]) == 2
    assert "not one adapt.deploy wrote" in _one_line_error(capsys)


def test_a_file_that_is_not_an_image_and_a_truncated_image(shipped, tmp_path, capsys):
    onnx_file = str(shipped[1])
    text = tmp_path / "notes.jpg"
    text.write_text("not an image\n")
    assert main(["predict", onnx_file, str(text), "--out", str(tmp_path / "out")]) == 2
    assert f"{text}: not a readable image (unknown or corrupt format)" in _one_line_error(capsys)
    data = Path(DEMO_TEST_IMAGES[0]).read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 3])
    assert main(["predict", onnx_file, str(truncated), "--out", str(tmp_path / "out")]) == 2
    assert f"{truncated}: image is truncated or corrupt" in _one_line_error(capsys)


def test_an_export_whose_mode_cannot_be_deployed_yet(tmp_path, capsys):
    """A mode defined outside adapt: refused by its name, before anything else."""
    export = Path(shutil.copytree(SHIPPED_EXPORT, tmp_path / "export"))
    config = json.loads((export / CONFIG_FILE).read_text())
    config.update(mode="distill", policy="distill")
    (export / CONFIG_FILE).write_text(json.dumps(config))
    out = tmp_path / "d.onnx"
    assert main(["export", str(export), "--out", str(out)]) == 2
    err = _one_line_error(capsys)
    assert f"{export / CONFIG_FILE}: mode 'distill' cannot be exported to ONNX yet" in err
    assert "deployable mode policies: prompt, linear, full, lora" in err
    assert not out.exists()


def test_a_test_size_too_small_for_one_graph(tmp_path, capsys):
    """Below 256 px Swin shrinks its window to the map: one graph cannot hold both, so it is refused."""
    flags = ["--classes", "tree", "--model", "glip_mini", "--checkpoint", str(CHECKPOINT), "--min-size", "96"]
    assert main(["export", *flags, "--out", str(tmp_path / "d.onnx")]) == 2
    err = _one_line_error(capsys)
    assert "input.min_size_test=96 resizes images below the 256 px the graph needs" in err
    assert "--min-size 225 or more" in err
