"""`python -m adapt.run` as users meet it: missing data stops with the fetch command, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys


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
