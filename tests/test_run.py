"""`python -m adapt.run` as users meet it: plain `shots=5`, one-sentence errors, no traceback."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from adapt.run import main

DEMO_SMALL = ["trainer=debug", "logger=none", "data.num_workers=0"]


def test_missing_data_names_what_is_missing_and_the_command_that_fetches_it(tmp_path):
    env = {**os.environ, "ADAPT_CACHE": str(tmp_path / "cache"), "ADAPT_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "adapt.run", "task=odinw/aquarium", "shots=5", "mode=prompt", "model=glip_t"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "python -m adapt.download odinw/aquarium" in proc.stderr
    assert "Aquarium" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", [[sys.executable, "-m", "adapt.run"], ["adapt"]], ids=["module", "cli"])
def test_entry_points_compose_the_job_from_any_folder(tmp_path, command):
    if command == ["adapt"]:
        script = shutil.which("adapt", path=os.path.dirname(sys.executable))
        if script is None:
            pytest.skip("the `adapt` console script is installed by `pip install`")
        command = [script]
    proc = subprocess.run(
        [*command, "shots=10", "mode=linear", "--cfg", "job"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "shots: 10" in proc.stdout and "name: linear" in proc.stdout


def test_the_mission_command_line_composes_with_shots_as_typed(tmp_path):
    """`shots=5` reaches Hydra unchanged (no argv rewriting) and selects the 5-shot recipe."""
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "adapt.run"),
            *("task=odinw/aquarium", "shots=5", "mode=prompt"),
            *("--cfg", "job", "--resolve"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    import yaml

    job = yaml.safe_load(proc.stdout)
    assert job["shots"] == 5 and job["task"]["id"] == "odinw/aquarium" and job["mode"]["name"] == "prompt"
    assert (job["recipe"]["epochs"], job["recipe"]["copies"]) == (200, 2)  # official "5_200_2"
    assert job["data"]["shots"] == 5 and job["trainer"]["max_epochs"] == 200


def test_a_multirun_over_shots_names_each_folder_by_its_value(tmp_path, monkeypatch, capsys):
    """`-m shots=0,all` as typed: each value gets its own folder; zero-shot at shots=all is the
    shots=0 evaluation again, so that job stops with one sentence instead of repeating it."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run(monkeypatch, "-m", "mode=zero", "shots=0,all", *DEMO_SMALL, f"hydra.sweep.dir={tmp_path / 'm'}")
    assert exit_info.value.code == 2
    assert (
        "adapt: error: shots=all with mode=zero, which trains nothing, is the shots=0 evaluation again in a "
        "folder of its own: use shots=0 with mode=zero"
    ) in capsys.readouterr().err
    folders = sorted(p.parent.relative_to(tmp_path / "m") for p in (tmp_path / "m").rglob("results.json"))
    # -<8 hex>: the small-input overrides make these runs distinct from the default ones (adapt/resolvers.py)
    assert len({str(f).rsplit("-", 1)[1] for f in folders}) == 1
    assert [str(f).rsplit("-", 1)[0] for f in folders] == [
        "demo/glip_mini_pretrained/zero/shots0_seed3",
        "demo/glip_mini_pretrained/zero/shotsall_seed3",
    ]
    for folder, (shots, status) in zip(folders, ((0, "complete"), ("all", "failed")), strict=True):
        results = json.loads((tmp_path / "m" / folder / "results.json").read_text())
        assert results["status"] == status and results["shots"] == shots
        assert (tmp_path / "m" / folder / ".hydra" / "overrides.yaml").is_file()  # written under the lock


def test_a_protocol_sweep_over_shots_as_typed(tmp_path):
    """`-m +sweep=smoke shots=1,3,5`: the sweeper composes every point (dry run: nothing launched)."""
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "adapt.run", "-m", "+sweep=smoke"),
            *("task=odinw/aquarium,odinw/rabbits", "shots=0,1,3,5", "mode=zero,prompt", "sweep.dry_run=true"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    launches = [
        line.split("would launch: ", 1)[1] for line in proc.stdout.splitlines() if "would launch" in line
    ]
    # per task: zero-shot once (shots=0), prompt tuning at 1, 3 and 5 shots
    assert re.search(
        r"16 grid points \(\d+ configurations composed\), 8 jobs to launch \(skipped: 8 redundant",
        proc.stdout,
    )
    shots = [arg for job in launches if "task=odinw/rabbits" in job for arg in job.split() if "shots" in arg]
    assert sorted(shots) == [
        "shots=0",
        "shots=1",
        "shots=3",
        "shots=5",
    ]


# ------------------------------------------------------------------------------------------------
# Bad configuration values: one sentence naming the value, exit status 2, no traceback
# (docs/bad_input.md, "Configuration")


def run(monkeypatch, *overrides: str) -> None:
    monkeypatch.setattr(sys, "argv", ["adapt", *overrides])
    main()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("shots=-1", "shots=-1 is not a number of labelled images per class: use 0 (zero-shot), a positive"),
        ("shots=0", "shots=0 is zero-shot evaluation, which trains nothing: use mode=zero, or shots=1,"),
        ("seed=abc", "seed=abc is not an integer (the paper's seeds are 3, 30 and 300)"),
        ("seed=-3", "seed=-3 is out of range: use an integer from 0 to 4294967295 (the paper's seeds are 3,"),
        ("resume=maybe", "resume=maybe is not one of false, true or auto"),
        ("trainer.max_steps=-5", "trainer.max_steps=-5 is not a number of optimiser steps: use a positive"),
        ("data.batch_size=0", "data.batch_size=0 is not a positive integer"),
        ("shots=7", "shots=7 has no row in recipe.by_shots (rows: 0, 1, 3, 5, 10, all): add one with"),
    ],
)
def test_bad_config_values_stop_with_one_sentence(tmp_path, monkeypatch, capsys, override, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run(monkeypatch, "mode=prompt", override, *DEMO_SMALL)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("adapt: error:")]
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err
    # the folder says what happened, as for any failed run, and its run.log has the sentence
    results = next(tmp_path.rglob("results.json"))
    assert json.loads(results.read_text())["status"] == "failed"
    assert message in (results.parent / "run.log").read_text()
    assert (results.parent / ".hydra" / "config.yaml").is_file()


def test_zero_shot_at_other_shots_stops_with_one_sentence(tmp_path, monkeypatch, capsys):
    """`shots=all mode=zero` used to write a second folder holding the same zero-shot result."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run(monkeypatch, "mode=zero", "shots=all", *DEMO_SMALL)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("adapt: error:")] == [
        "adapt: error: shots=all with mode=zero, which trains nothing, is the shots=0 evaluation again in a "
        "folder of its own: use shots=0 with mode=zero"
    ]
