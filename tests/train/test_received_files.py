"""A file someone else made is data: loading it never imports, calls or interpolates a name it carries.

Each test plants what a hostile or careless sender could put in a file (an export naming
``os.system`` or a module shipped beside it, ``../`` paths, a results.json with ``${oc.env:...}``, a
checkpoint whose pickle calls ``builtins.exec``) and checks that it is refused in one sentence and
that nothing ran: no marker file was written and no planted module reached ``sys.modules``.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_export import CHECKPOINT, make_export

from adapt.detector import Detector
from adapt.export import CONFIG_FILE, ExportError
from adapt.model import CheckpointError, build_glip, load_checkpoint
from adapt.model.config import GLIPConfig, model_config
from adapt.report import build_report, render_markdown
from adapt.report.tables import JOBS_COLUMNS, csv_text, job_rows
from adapt.runs.manifest import MANIFEST_FILE, ManifestError, read_manifest

PLANTED = "adapt_planted_mode"


def _plant_module(folder: Path, marker: Path) -> None:
    """A module shipped beside an export that writes ``marker`` if it is ever imported."""
    (folder / f"{PLANTED}.py").write_text(
        f"open({str(marker)!r}, 'w').write('imported')\nfrom adapt.modes import PromptTuning as Policy\n"
    )


def _edit(export: Path, **fields: object) -> None:
    meta = export / CONFIG_FILE
    config = json.loads(meta.read_text())
    config.update(fields)
    meta.write_text(json.dumps(config))


@pytest.mark.parametrize(
    "policy", ["os.system", "builtins.exec", f"{PLANTED}.Policy", "../../x", "adapt.modes.base.ModePolicy"]
)
def test_an_export_naming_code_is_refused_and_nothing_is_imported(tmp_path, monkeypatch, policy):
    export = make_export(tmp_path / "export", "prompt")
    marker = tmp_path / "imported.txt"
    _plant_module(export, marker)
    _edit(export, policy=policy)
    monkeypatch.chdir(export)  # the current folder is on sys.path: a planted module would import
    monkeypatch.syspath_prepend(str(export))
    with pytest.raises(ExportError, match=rf"mode policy '{policy}' is not registered \(known: .*prompt"):
        Detector.from_export(export, checkpoint=CHECKPOINT)
    assert PLANTED not in sys.modules and not marker.exists()


def test_an_old_export_whose_mode_is_a_path_is_refused(tmp_path):
    export = make_export(tmp_path / "export", "linear")
    config = json.loads((export / CONFIG_FILE).read_text())
    del config["policy"]  # format 1: the mode names the policy
    config.update(version=1, mode="../../../conf/mode/lora")
    (export / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ExportError, match=r"mode policy '\.\./\.\./\.\./conf/mode/lora' is not registered"):
        Detector.from_export(export, checkpoint=CHECKPOINT)


def test_predict_refuses_an_export_with_a_module_beside_it_in_a_fresh_process(tmp_path):
    export = make_export(tmp_path / "export", "prompt")
    marker = tmp_path / "imported.txt"
    _plant_module(export, marker)
    _edit(export, policy=f"{PLANTED}.Policy")
    image = Path(__file__).parents[2] / "adapt" / "data" / "demo" / "images" / "osbs_029.jpg"
    done = subprocess.run(
        [sys.executable, "-m", "adapt.predict", str(image), "--prompt", ".", "--checkpoint", str(CHECKPOINT)],
        cwd=export,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    assert done.returncode == 2, done.stderr
    assert "is not registered" in done.stderr and "Traceback" not in done.stderr
    assert not marker.exists()


def test_an_export_cannot_choose_the_tokenizer_folder_or_the_model_config(tmp_path):
    export = make_export(tmp_path / "export", "linear")
    original = (export / CONFIG_FILE).read_text()
    config = json.loads(original)
    for tokenizer in ("../../resources/bert-base-uncased", str(tmp_path)):
        config["arch"]["language"]["tokenizer"] = tokenizer
        (export / CONFIG_FILE).write_text(json.dumps(config))
        with pytest.raises(ExportError, match=rf"records tokenizer '{tokenizer}', which adapt does not ship"):
            Detector.from_export(export, checkpoint=CHECKPOINT)
    # The user may pass a tokenizer folder, which replaces the recorded name.
    (export / CONFIG_FILE).write_text(original)
    shipped = Path(__file__).parents[2] / "adapt" / "resources" / "bert-base-uncased"
    detector = Detector.from_export(export, checkpoint=CHECKPOINT, tokenizer=shipped)
    assert detector.model.cfg.language.tokenizer == str(shipped)
    with pytest.raises(ValueError, match=r"unknown model config '\.\./\.\./x'"):
        model_config("../../x")


def test_a_results_json_is_read_without_interpolation(tmp_path, monkeypatch):
    """``${oc.env:...}`` in a received results.json stays text: the reader's environment never
    reaches the report."""
    monkeypatch.setenv("ADAPT_TEST_SECRET", "s3cr3t-value")
    run = tmp_path / "sweep" / "run"
    run.mkdir(parents=True)
    config = {
        "task": {"id": "${oc.env:ADAPT_TEST_SECRET}", "name": "${oc.env:ADAPT_TEST_SECRET}"},
        "model": {"name": "glip_mini", "paper": "${oc.env:ADAPT_TEST_SECRET}"},
        "mode": {"name": "prompt"},
        "shots": 1,
        "seed": 3,
    }
    record = {"status": "complete", "test": {"ap": 1.0, "per_category": {}}, "config": config}
    (run / "results.json").write_text(json.dumps(record))
    report = build_report(tmp_path / "sweep")
    text = render_markdown(report) + csv_text(JOBS_COLUMNS, job_rows(report))
    assert "${oc.env:ADAPT_TEST_SECRET}" in text and "s3cr3t-value" not in text


def test_a_manifest_folder_outside_the_sweep_is_refused(tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    entry = {
        "folder": "../../outside",
        "task": "demo",
        "model": "glip_mini",
        "mode": "prompt",
        "shots": 1,
        "seed": 3,
        "decision": "launched",
    }
    (sweep / MANIFEST_FILE).write_text(json.dumps({"format": 1, "invocations": [], "jobs": [entry]}))
    with pytest.raises(
        ManifestError, match=r"job folder '\.\./\.\./outside' points outside the sweep folder"
    ):
        read_manifest(sweep / MANIFEST_FILE)
    assert any("points outside the sweep folder" in w for w in build_report(sweep).warnings)


class _Payload:
    """Pickles as a call to ``builtins.exec`` writing a marker: what a malicious .pth does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def test_a_checkpoint_that_calls_exec_is_named_and_no_command_is_offered(tmp_path):
    marker = tmp_path / "ran.txt"
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "payload": _Payload(marker)}, path)
    model = build_glip(GLIPConfig.from_dict(model_config("glip_mini")["arch"]))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(model, path)
    message = str(info.value)
    assert "its pickle would call builtins.exec" in message
    assert "adapt.convert" not in message and "--allow-global" not in message
    assert not marker.exists()

    from adapt.convert import main

    target = tmp_path / "evil.safetensors"
    assert main([str(path), str(target), "--model", "glip_mini", "--allow-global", "builtins.exec"]) == 1
    assert not marker.exists() and not target.exists()


@pytest.mark.parametrize("name", ["builtins.exec", "os.system", "builtins.getattr", "subprocess.Popen"])
def test_allow_global_accepts_data_types_only(tmp_path, name, capsys):
    from adapt.convert import main

    assert (
        main(
            [str(CHECKPOINT), str(tmp_path / "x.safetensors"), "--model", "glip_mini", "--allow-global", name]
        )
        == 1
    )
    assert f"--allow-global {name}: not a data type" in capsys.readouterr().err


def test_the_advised_conversion_quotes_every_path_for_the_shell(tmp_path):
    """A file named to break out of quotes cannot make the advised command run anything."""
    import numpy as np

    marker = tmp_path / "pwned"
    folder = tmp_path / "it's here"
    folder.mkdir()
    path = folder / "x'$(touch pwned)'.pth"  # run from tmp_path, this would create `marker`
    torch.save({"model": {}, "anchors_np": np.zeros((2, 2))}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(build_glip(GLIPConfig.from_dict(model_config("glip_mini")["arch"])), path)
    command = str(info.value).split("convert it once with: ", 1)[1]
    assert command.startswith("python -m adapt.convert ")
    args = shlex.split(command)
    assert args[3] == str(path) and args[4] == str(path.with_suffix(".safetensors"))
    # What the shell makes of the line, with the program replaced by a harmless echo of its arguments.
    shown = subprocess.run(
        ["bash", "-c", "printf '%s\\n' " + command.removeprefix("python -m adapt.convert ")],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout.splitlines()
    assert shown[0] == str(path) and not marker.exists()
