"""`python -m adapt.run` as users meet it: missing data stops with the fetch command, no traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest


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
    assert "k: 10" in proc.stdout and "name: linear" in proc.stdout
