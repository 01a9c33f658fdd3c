"""benchmarks/families_training.py (the loss-decrease and step-time figures of docs/families.md) runs
the job's pieces, and training lowers the training split's loss."""

from __future__ import annotations

from benchmarks import families_training


def test_full_fine_tuning_lowers_the_demo_s_training_loss():
    r = families_training.measure("owlv2_mini", "full", steps=5)
    assert r["trainable"] > 0 and r["step_ms"] > 0
    assert r["after"] < r["before"]


def test_prompt_tuning_trains_only_the_offset():
    r = families_training.measure("grounding_dino_mini", "prompt", steps=2)
    # One row per caption token of the text encoder's output (grounding_dino_mini: 256 x 32).
    assert r["trainable"] == 256 * 32
    assert r["after"] < r["before"]
