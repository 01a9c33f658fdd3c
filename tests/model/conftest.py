"""Fixtures of the tests that compare against the official code's numbers (the mini oracle fixture)."""

from __future__ import annotations

import pytest
import torch

from adapt.model import GLIP, build_glip, load_checkpoint
from tests.model.test_forward_oracle import FIXTURE, mini_config


@pytest.fixture(scope="module")
def oracle() -> dict:
    """``mini_io.pt``: the inputs, intermediates, outputs and losses the official code computed."""
    return torch.load(FIXTURE / "mini_io.pt", weights_only=True)


@pytest.fixture(scope="module")
def model() -> GLIP:
    """The mini GLIP in eval mode with the fixture's official checkpoint loaded. Built from another
    seed than the fixture's: every weight must come from the checkpoint."""
    m = build_glip(mini_config(), seed=123)
    report = load_checkpoint(m, FIXTURE / "mini_glip.pth")
    assert report.ok, str(report)
    return m.eval()
