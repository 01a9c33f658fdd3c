"""benchmarks/odinw/cost.py on a detector family at mini size: the job's own step (FamilyAdaptation,
the family's collate and processor), timed and FLOP-counted per mode, and the sweep's cost table.

No wall-clock value is asserted: timings only have to be positive numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.odinw import cost


def test_the_cost_benchmark_counts_a_family_s_flops(tmp_path: Path, capsys: pytest.CaptureFixture):
    """FLOPs only (no Trainer runs): each mode's real step, the evaluation, the sweep's tables."""
    out = tmp_path / "cost.json"
    argv = [
        "--model",
        "owlv2_mini",
        "--device",
        "cpu",
        "--size",
        "32",
        "--skip-timing",
        "--peak-tflops",
        "989",
    ]
    assert cost.main([*argv, "--modes", "prompt", "full", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    report = json.loads(out.read_text())
    train = report["models"]["owlv2_mini"]["train"]
    assert train["full"]["flops_per_step"] > train["prompt"]["flops_per_step"] > 0
    assert train["full"]["trainable_params"] > train["prompt"]["trainable_params"] == 20 * 32  # PascalVOC
    assert [r["padded_hw"] for r in train.values()] == [[[64, 64]], [[64, 64]]]  # OWLv2 pads to a square
    assert report["models"]["owlv2_mini"]["eval"]["flops_per_image"] > 0
    assert "## FLOPs" in text and "## Device-hours" in text


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "modes", "scale"),
    [("owlv2_mini", ("prompt",), 64), ("grounding_dino_mini", ("prompt", "full"), 80)],
)
def test_the_cost_benchmark_measures_a_family(
    tmp_path: Path, capsys: pytest.CaptureFixture, model: str, modes: tuple[str, ...], scale: int
):
    out = tmp_path / "cost.json"
    argv = ["--model", model, "--device", "cpu", "--size", "32", "--reps", "1", "--warmup", "1"]
    assert cost.main([*argv, "--modes", *modes, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    report = json.loads(out.read_text())
    train = report["models"][model]["train"]
    assert set(train) == set(modes)
    for mode, r in train.items():
        assert r["t_step"] > 0 and r["flops_per_step"] > 0 and r["trainable_params"] > 0, mode
        # The processor's size is the one training scale (the synthetic images are 32 x 53).
        assert r["padded_hw"][0][0] <= scale and max(r["padded_hw"][0]) >= scale, mode
    if "full" in train:
        assert train["full"]["flops_per_step"] > train["prompt"]["flops_per_step"]
        assert train["full"]["trainable_params"] > train["prompt"]["trainable_params"]
    ev = report["models"][model]["eval"]
    assert ev["t_img"] > 0 and ev["flops_per_image"] > 0
    assert report["settings"]["train_scales"] == [scale]
    assert all(f"`t_step({mode})`" in text for mode in modes) and "## Device-hours" in text
