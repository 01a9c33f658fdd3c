"""The quickstart notebook runs top to bottom (its code cells, executed in order without Jupyter)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import pytest

NOTEBOOK = Path(__file__).parents[1] / "notebooks" / "quickstart.ipynb"


@pytest.mark.slow
def test_quickstart_notebook_runs(monkeypatch):
    matplotlib.use("Agg")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    namespace: dict = {}
    for cell in cells:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), f"{NOTEBOOK.name}:{cell['id']}", "exec"), namespace)
    assert namespace["results"]["status"] == "complete"
    assert namespace["tuned"].model.language_backbone is None
