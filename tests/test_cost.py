"""benchmarks/odinw: the protocol arithmetic, the sweep reader and a smoke run of the measuring path.

No wall-clock value is ever asserted: timings only have to be positive numbers.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
import yaml

import adapt
from adapt.flops import count_flops
from adapt.train.datamodule import steps_per_period
from benchmarks.odinw import cost, estimate, protocol

CONF = Path(adapt.__file__).parent / "conf"
# ../shared beside the repository (as CI checks it out), found from here rather than a fixed path.
SPEC = Path(__file__).resolve().parents[2] / "shared" / "docs" / "glip_spec.md"


# ------------------------------------------------------------------------------------------------
# Dataset sizes and protocol data


def test_sizes_csv_totals_and_classes_match_the_task_configs():
    sizes = protocol.load_sizes()
    assert len(sizes) == 13
    # glip_spec.md 4.1 / the README: 50 classes, 24,488 train, 4,938 val, 4,575 test images
    # (PascalVOC has no test split: its test is its val split, 3,422 images).
    assert sum(s.classes for s in sizes) == 50
    assert sum(s.train for s in sizes) == 24488
    assert sum(s.val for s in sizes) == 4938
    assert sum(s.test for s in sizes) == 4575
    for s in sizes:
        task = yaml.safe_load((CONF / "task" / f"{s.task}.yaml").read_text())
        assert task["id"] == s.task
        assert task["name"] == s.dataset
        assert len(task["categories"]) == s.classes, s.task
    assert {s.task for s in sizes} == {p.task for p in protocol.planned_runs()}


def test_sizes_csv_matches_glip_spec_table_9():
    if not SPEC.is_file():
        if os.environ.get("ADAPT_REQUIRE_SHARED"):  # set by .ci/run: there the spec must be checked
            pytest.fail(f"{SPEC} is missing (ADAPT_REQUIRE_SHARED is set)")
        pytest.skip(f"{SPEC} is not available beside this checkout")
    text = SPEC.read_text(encoding="utf-8")
    section = text.split("### 4.1", 1)[1].split("### 4.2", 1)[0]
    spec_rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 6 or not re.match(r"^\d+ /", cells[2]):
            continue
        k = int(cells[2].split("/")[0])
        counts = re.match(r"^(\d+) / (\d+) / (\d+|–)", cells[-1])
        assert counts, line
        train, val, test = counts.groups()
        spec_rows[cells[0]] = (k, int(train), int(val), int(val) if test == "–" else int(test))
    assert len(spec_rows) == 13
    for s in protocol.load_sizes():
        assert spec_rows[s.dataset] == (s.classes, s.train, s.val, s.test), s.dataset


def test_shots_recipes_give_the_readme_evaluation_bounds():
    recipes = protocol.load_shots_recipes()
    assert list(recipes) == [0, 1, 3, 5, 10, "all"]
    assert [recipes[k].copies for k in (1, 3, 5, 10, "all")] == [8, 4, 2, 1, 1]
    # K-shot: early stop after 8 worse evaluations, so at least 9; all data after 4, so at least 5.
    assert [recipes[k].min_evaluations for k in (1, 3, 5, 10)] == [9, 9, 9, 9]
    assert recipes["all"].min_evaluations == 5
    assert {recipes[k].max_evaluations for k in (1, 3, 5, 10, "all")} == {200}


def test_the_odinw13_grid_has_520_runs_per_model_and_lora_adds_169():
    points = protocol.planned_runs()
    tasks = {p.task for p in points}
    assert len(tasks) == 13 and {p.seed for p in points} == {3, 30, 300}
    runs = protocol.runs_per_task(points)
    assert runs[("zero", 0)] == 1
    assert runs[("prompt", 5)] == 3 and runs[("full", "all")] == 1
    assert ("prompt", 0) not in runs and ("zero", 5) not in runs
    # 13 x (1 zero-shot + 3 modes x 4 shot settings x 3 seeds + 3 full-data) = 520
    assert sum(runs.values()) * len(tasks) == len(points) == 520
    with_lora = protocol.runs_per_task(protocol.planned_runs(("zero", "prompt", "linear", "full", "lora")))
    assert sum(with_lora.values()) * len(tasks) == 520 + 169


# ------------------------------------------------------------------------------------------------
# Arithmetic


def test_steps_per_period_reproduces_the_readme_aggregates():
    # The README's "C_K x K x classes / 4" over all 13 tasks (50 classes, 24,488 images).
    assert steps_per_period(1 * 50, 8, 4) == 100
    assert steps_per_period(3 * 50, 4, 4) == 150
    assert steps_per_period(5 * 50, 2, 4) == 125
    assert steps_per_period(10 * 50, 1, 4) == 125
    assert steps_per_period(24488, 1, 4) == 6122
    assert steps_per_period(3, 1, 4) == 1  # at least one step per period


def test_period_counts_floor_per_task_as_the_datamodule_does():
    counts = protocol.period_counts(protocol.load_sizes(), protocol.load_shots_recipes(), batch=4)
    # Per task, copies * N // 4. 5- and 10-shot: 2.5 x classes each, floored per task:
    # 50 + 12 + 17 + 2 + 2 + 5 + 2 + 2 + 7 + 12 + 2 + 2 + 5 = 120 (not 125).
    # All data: 3422 + 13 + 112 + 495 + 960 + 10 + 4 + 37 + 101 + 219 + 594 + 116 + 35 = 6118.
    assert {k: v.steps for k, v in counts.items()} == {0: 0, 1: 100, 3: 150, 5: 120, 10: 120, "all": 6118}
    # K-shot runs validate on the K-shot val split once per period (no copies in adapt).
    assert {k: v.val_images for k, v in counts.items()} == {
        0: 4938,
        1: 50,
        3: 150,
        5: 250,
        10: 500,
        "all": 4938,
    }


def test_scale_weights_are_the_batch_max_distribution():
    weights = protocol.scale_weights(5, 4)
    assert weights == pytest.approx([1 / 625, 15 / 625, 65 / 625, 175 / 625, 369 / 625])
    assert protocol.scale_weights(1, 4) == [1.0]
    assert protocol.weighted([1.0, 2.0], [1.0, 3.0]) == pytest.approx(1.75)
    # Timing only some scales keeps their weights from the whole recipe.
    recipe = (480, 560, 640, 720, 800)
    assert protocol.timed_scale_weights((640, 800), recipe, 4) == pytest.approx([65 / 625, 369 / 625])


def _protocol(batch=4):
    sizes = protocol.load_sizes()
    recipes = protocol.load_shots_recipes()
    runs = protocol.runs_per_task(protocol.planned_runs())
    return sizes, recipes, runs


def test_sweep_work_at_the_protocol_minimum_by_hand():
    sizes, recipes, runs = _protocol()
    work = protocol.sweep_work(sizes, recipes, runs, lambda m, s: 5.0 if s == "all" else 9.0, batch=4)
    tot = protocol.totals(work)
    assert tot.jobs == 520
    # steps(m) = 3 x (100 + 150 + 120 + 120) x 9 + 6118 x 5 = 13,230 + 30,590
    assert tot.steps == {"prompt": 43820.0, "linear": 43820.0, "full": 43820.0}
    # Per trained mode: 3 x ((50 + 150 + 250 + 500) x 9 + 4 x 4575) + 4938 x 5 + 4575 = 109,815;
    # zero-shot: 4938 val + 4575 test.
    assert tot.eval_images == 3 * 109815 + 4938 + 4575
    seconds, longest = protocol.sweep_cost(work, {"prompt": 1.0, "linear": 2.0, "full": 3.0}, 0.5, 10.0)
    assert seconds == pytest.approx(43820 * 6 + 0.5 * tot.eval_images + 10.0 * 520)
    # The longest run: PascalVOC, full data, full mode: 3422 steps x 5 x 3 s + (3422 x 5 + 3422) x 0.5 s + 10.
    assert longest == pytest.approx(3422 * 5 * 3 + (3422 * 5 + 3422) * 0.5 + 10)
    assert protocol.wall_clock(seconds, longest, 1) == seconds
    assert protocol.wall_clock(seconds, longest, 10**6) == longest


def test_job_cost_of_one_hand_made_task():
    size = protocol.TaskSize("t/x", "X", classes=2, train=10, val=6, test=3)
    recipe = protocol.ShotsRecipe(shots=3, copies=4, epochs=200, stop_patience=8)
    # 3 x 2 = 6 images x 4 copies // 4 = 6 steps per period; 6 val images per evaluation.
    assert protocol.task_period(size, recipe, 4) == protocol.PeriodCounts(6, 6)
    [w] = protocol.sweep_work([size], {3: recipe}, {("prompt", 3): 3}, lambda m, s: 10.0, batch=4)
    assert (w.steps, w.eval_images, w.runs) == (60.0, 63.0, 3)
    assert protocol.job_cost(w, {"prompt": 2.0}, 1.0, 5.0) == 60 * 2 + 63 + 5
    assert protocol.sweep_cost([w], {"prompt": 2.0}, 1.0, 5.0) == (3 * 188.0, 188.0)


# ------------------------------------------------------------------------------------------------
# A finished sweep


def _write_run(root: Path, task, mode, shots, seed, status="complete", evaluations=0, wall=10.0):
    folder = root / task / mode / f"shots{shots}_seed{seed}"
    folder.mkdir(parents=True)
    data = {
        "status": status,
        "task": task,
        "model": "glip_mini",
        "mode": mode,
        "shots": shots,
        "seed": seed,
        "val_history": [{"step": 10 * (i + 1), "epoch": i, "ap": 1.0} for i in range(evaluations)],
        "test": {"ap": 1.0} if status == "complete" else None,
        "wall_time_s": wall if status == "complete" else None,
    }
    (folder / "results.json").write_text(json.dumps(data))


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    root = tmp_path / "multirun" / "odinw13" / "glip_mini"
    _write_run(root, "odinw/packages", "zero", 0, 3, evaluations=1, wall=30.0)
    _write_run(root, "odinw/aquarium", "zero", 0, 3, evaluations=1, wall=50.0)
    _write_run(root, "odinw/aquarium", "prompt", 1, 3, evaluations=9, wall=100.0)
    _write_run(root, "odinw/aquarium", "prompt", 1, 30, evaluations=12, wall=120.0)
    _write_run(root, "odinw/aquarium", "linear", 1, 3, evaluations=20, wall=200.0)
    _write_run(root, "odinw/aquarium", "full", "all", 3, evaluations=6, wall=1000.0)
    _write_run(root, "odinw/aquarium", "prompt", 1, 300, status="failed")
    _write_run(root, "odinw/aquarium", "prompt", 3, 3, status="running", evaluations=4)
    return root


def test_read_sweep_takes_e_from_val_history_of_complete_runs(sweep_dir: Path):
    stats = estimate.read_sweep(sweep_dir, "glip_mini")
    assert stats.statuses == {"complete": 6, "failed": 1, "running": 1}
    assert stats.evaluations == {("prompt", 1): [9, 12], ("linear", 1): [20], ("full", "all"): [6]}
    assert stats.mean_evaluations("prompt", 1) == 10.5
    assert stats.mean_evaluations("prompt", 3) is None  # only a running job
    assert stats.evaluations_by_shots() == {1: [9, 12, 20], "all": [6]}
    assert stats.wall_time_s == 30 + 50 + 100 + 120 + 200 + 1000
    assert stats.wall_by_mode == {"zero": 80.0, "prompt": 220.0, "linear": 200.0, "full": 1000.0}
    # t_job: the zero-shot run of the dataset with the fewest val + test images (Packages: 4 + 3).
    assert estimate.t_job_from_sweep(stats, protocol.load_sizes()) == ("odinw/packages", 30.0)
    assert estimate.read_sweep(sweep_dir, "glip_t").statuses == {}


def test_estimates_use_the_sweeps_e_and_fall_back_to_the_minimum(sweep_dir: Path):
    sizes, recipes, runs = _protocol()
    stats = estimate.read_sweep(sweep_dir, "glip_mini")
    measured = {
        "train": {m: {"t_step": 1.0, "flops_per_step": 1e12} for m in ("prompt", "linear", "full")},
        "eval": {"t_img": 0.1, "flops_per_image": 1e11},
    }
    [est] = estimate.estimates_for(
        "glip_mini", measured, sizes, recipes, runs, 4, stats, 30.0, 1000.0, [1, 64]
    )
    assert est.label == "E from the sweep"
    assert est.evaluations["prompt 1"] == 10.5 and est.evaluations["linear 1"] == 20.0
    assert est.evaluations["full all"] == 6.0 and est.evaluations["prompt 3"] == 9.0  # the minimum
    assert est.t_job_included and est.hours > 0 and est.wall_hours[64] >= est.hours / 64
    assert est.flop_hours_at_peak == pytest.approx(est.flop_total / 1e15 / 3600)
    low, high = estimate.estimates_for("glip_mini", measured, sizes, recipes, runs, 4, None, None, None, [1])
    assert (low.label, high.label) == ("E at the protocol minimum", "E at the protocol maximum")
    assert high.hours > low.hours and not low.t_job_included and low.flop_hours_at_peak is None
    [partial] = estimate.estimates_for(
        "m",
        {"train": {"prompt": {"t_step": 1.0}}, "eval": {}},
        sizes,
        recipes,
        runs,
        4,
        stats,
        None,
        None,
        [1],
    )
    assert partial.hours is None and partial.missing == ["t_step(linear)", "t_step(full)", "t_img"]


# ------------------------------------------------------------------------------------------------
# Smoke run of the measuring path (glip_mini, tiny images, CPU)


def _check_markdown_tables(text: str) -> int:
    tables = 0
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|---"):
            header = lines[i - 1]
            width = header.count("|")
            assert line.count("|") == width
            j = i + 1
            while j < len(lines) and lines[j].startswith("|"):
                assert lines[j].count("|") == width, lines[j]
                j += 1
            assert j > i + 1, "table without rows"
            tables += 1
    return tables


@pytest.mark.parametrize(
    ("modes", "jobs", "eval_modes"),
    [
        # full fine-tuning and the cached linear probe (a mode whose YAML has a defaults list):
        # 13 x (1 zero-shot + 2 modes x (4 shots x 3 seeds + 1 full-data)) runs
        pytest.param(("full", "linear_cached"), 13 * 27, (), id="full-and-linear_cached"),
        # the methods the field compares: two training modes, and the ensemble per evaluated image
        pytest.param(
            ("full", "fusion_prompt", "context_prompt"),
            13 * 40,
            ("zero_ensemble",),
            id="methods",
            marks=pytest.mark.slow,  # about 2 minutes of CPU
        ),
        pytest.param(
            ("prompt", "linear", "full", "lora"), 520 + 169, (), id="every-mode", marks=pytest.mark.slow
        ),
    ],
)
def test_smoke_run_measures_every_quantity(
    tmp_path: Path,
    sweep_dir: Path,
    capsys: pytest.CaptureFixture,
    modes: tuple[str, ...],
    jobs: int,
    eval_modes: tuple[str, ...],
):
    out = tmp_path / "cost.json"
    argv = [
        "--model",
        "glip_mini",
        "--device",
        "cpu",
        "--size",
        "32",
        "--reps",
        "1",
        "--warmup",
        "1",
        "--modes",
        *modes,
        *(["--eval-modes", *eval_modes] if eval_modes else []),
        "--peak-tflops",
        "989",
        "--sweep",
        str(sweep_dir),
        "--json",
        str(out),
    ]
    assert cost.main(argv) == 0
    text = capsys.readouterr().out
    report = json.loads(out.read_text())
    train = report["models"]["glip_mini"]["train"]
    assert set(train) == set(modes)
    for mode, r in train.items():
        assert r["t_step"] > 0 and all(t > 0 for t in r["t_step_per_scale"]), mode
        assert r["flops_per_step"] > 0 and r["trainable_params"] > 0, mode
        assert r["precision"] == "32-true"
    if "linear" in train:
        assert train["full"]["flops_per_step"] > train["linear"]["flops_per_step"]
    # On the CPU the deformable convs are adapt's sampled GEMM: forward addmm, backward mm.
    assert {"aten.addmm", "aten.mm"} <= set(train["full"]["flops_by_op"])
    ev = report["models"]["glip_mini"]["eval"]
    assert ev["t_img"] > 0 and ev["flops_per_image"] > 0
    for mode in eval_modes:  # one backbone, a head per caption: more than zero-shot's image
        r = report["models"]["glip_mini"]["eval_modes"][mode]
        assert r["t_img"] > 0 and r["flops_per_image"] > ev["flops_per_image"], mode
        assert f"`t_img({mode})`" in text and f"evaluated image, `{mode}` / zero-shot" in text
    assert report["protocol"]["jobs"] == jobs
    [est] = report["estimates"]
    assert est["label"] == "E from the sweep" and est["hours"] > 0 and est["flop_hours_at_peak"] > 0
    assert report["machine"]["torch"] and report["settings"]["train_scales"] == [32]
    # Markdown: the measured, FLOP, protocol, sweep and hours tables, all well-formed.
    assert _check_markdown_tables(text) >= 6
    for heading in (
        "## Measured quantities",
        "## FLOPs",
        "## Protocol counts",
        "## Sweep",
        "## Device-hours",
    ):
        assert heading in text
    assert all(f"`t_step({mode})`" in text for mode in modes) and "lower bound" in text


def test_scaled_dot_product_attention_on_cpu_is_counted():
    q = torch.randn(1, 2, 16, 8)
    count = count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q))
    assert count.total == 2 * (2 * 1 * 2 * 16 * 16 * 8)  # QK^T and AV


def test_deform_conv2d_is_counted_as_its_gemm():
    from torchvision.ops import deform_conv2d

    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    weight = torch.randn(6, 4, 3, 3, requires_grad=True)
    offset = torch.zeros(2, 2 * 9, 8, 8)
    forward = count_flops(lambda: deform_conv2d(x, offset, weight, padding=1))
    # 2 x N x Cout x Cin x kh x kw x Ho x Wo
    assert forward.total == 2 * 2 * 6 * 4 * 9 * 64
    assert set(forward.by_op) == {"torchvision.deform_conv2d"}
    both = count_flops(lambda: deform_conv2d(x, offset, weight, padding=1).sum().backward())
    assert both.total == 3 * forward.total  # backward: the grads of the columns and of the weight


def test_relative_cost_divides_each_step_by_full_and_each_method_image_by_zero_shot():
    from benchmarks.odinw.render import _relative

    models = {
        "glip_t": {
            "train": {
                "full": {"flops_per_step": 800.0, "t_step": 16.0, "peak_memory_mb": 4000.0},
                "fusion_prompt": {"flops_per_step": 400.0, "t_step": 8.0},
            },
            "eval": {"flops_per_image": 100.0, "t_img": 2.0},
            "eval_modes": {"zero_ensemble": {"flops_per_image": 250.0, "t_img": 5.0}},
        }
    }
    rows = [line for line in _relative({"models": models}) if line.startswith("| glip_t")]
    assert rows == [
        "| glip_t | training step, `fusion_prompt` / `full` | 0.50 | 0.50 | – |",
        "| glip_t | evaluated image, `zero_ensemble` / zero-shot | 2.50 | 2.50 | – |",
    ]
    assert cost.eval_only_modes() == ("zero_ensemble",)
    assert {"fusion_prompt", "context_prompt"} <= set(cost.measurable_modes())
