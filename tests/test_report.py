"""adapt.report on synthetic sweep folders, and the shipped paper numbers against the spec's tables."""

from __future__ import annotations

import csv
import itertools
import json
import math
import re
import statistics
from pathlib import Path

import pytest
import yaml

from adapt import report as rp
from adapt.atomic import write_json
from adapt.sweep import GridPoint

SPEC = Path("/work/shared/docs/glip_spec.md")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ODINW_TASKS = {
    "PascalVOC": "odinw/pascalvoc",
    "AerialDrone": "odinw/aerial_drone",
    "Aquarium": "odinw/aquarium",
    "Rabbits": "odinw/rabbits",
    "EgoHands": "odinw/egohands",
    "Mushrooms": "odinw/mushrooms",
    "Packages": "odinw/packages",
    "Raccoon": "odinw/raccoon",
    "Shellfish": "odinw/shellfish",
    "Vehicles": "odinw/vehicles",
    "Pistols": "odinw/pistols",
    "Pothole": "odinw/pothole",
    "Thermal": "odinw/thermal",
}
RELEASED_GLIP_T = "glip_tiny_model_o365_goldg_cc_sbu.pth"


@pytest.fixture(scope="module")
def paper() -> rp.PaperReference:
    ref = rp.load_paper()
    assert ref.source is not None, "benchmarks/odinw/paper_*.csv not found"
    return ref


# ------------------------------------------------------------------------------------------------
# The shipped paper numbers


def test_paper_data_has_every_model_mode_and_shot(paper):
    for model in rp.PAPER_MODELS:
        assert (model, "zero", 0) in paper.per_dataset and (model, "zero", 0) in paper.average
        for mode, shots in itertools.product(("prompt", "linear", "full"), (1, 3, 5, 10, "all")):
            assert set(paper.per_dataset[(model, mode, shots)]) == {*rp.ODINW13_KEYS, "avg"}
            assert (model, mode, shots) in paper.average
    assert len(paper.per_dataset) == len(paper.average) == 5 * (1 + 3 * 5)


def test_paper_spot_values_checked_by_hand(paper):
    # Read off glip_spec.md 5.2-5.4b by eye, independently of the parser below.
    assert paper.dataset("GLIP-T", "prompt", 5, "Aquarium") == 41.0
    assert paper.dataset("GLIP-L", "full", "all", "Thermal") == 83.1
    assert paper.dataset("GLIP-T (A)", "linear", 1, "PascalVOC") == 52.9
    assert paper.dataset("GLIP-T (C)", "prompt", 10, "Pothole") == 30.1
    assert paper.dataset("GLIP-T (B)", "full", 3, "Rabbits") == 69.5
    assert paper.dataset("GLIP-T", "zero", 0, "EgoHands") == 50.0
    assert paper.dataset("GLIP-L", "zero", 0, "Shellfish") == 68.9
    assert paper.table_average("GLIP-T (A)", "prompt", 3) == 36.9  # Table 16
    assert paper.headline("GLIP-T (A)", "prompt", 3) == (37.0, None)  # Tables 11-13
    assert paper.headline("GLIP-L", "prompt", 1) == (59.5, 0.4)
    assert paper.headline("GLIP-T", "full", 10) == (58.4, 0.2)
    assert paper.headline("GLIP-L", "linear", 5) == (55.0, 0.0)
    assert paper.headline("GLIP-T (C)", "prompt", "all") == (62.8, None)
    assert paper.headline("GLIP-T (A)", "zero", 0) == (28.7, None)  # Table 14 says 28.8
    assert paper.table_average("GLIP-T (A)", "zero", 0) == 28.8


def test_paper_table_averages_match_their_columns(paper):
    # Each value is rounded to 0.1, so the mean of 13 of them can be off by up to 0.1.
    for key, row in paper.per_dataset.items():
        mean = statistics.fmean(row[k] for k in rp.ODINW13_KEYS)
        assert abs(mean - row["avg"]) <= 0.1 + 1e-9, key


def _spec_section(text: str, heading: str) -> str:
    start = text.index(heading)
    ends = [i for i in (text.find("\n### ", start + 1), text.find("\n## ", start + 1)) if i != -1]
    return text[start : min(ends)]


def _spec_rows(section: str) -> list[list[str]]:
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in section.splitlines()
        if line.startswith("|") and not line.startswith("|---")
    ]
    return rows[1:]  # without the header


def _num(text: str) -> tuple[float, float | None]:
    mean, _, std = text.partition("±")
    return float(mean), (float(std) if std.strip() else None)


def test_paper_data_matches_the_spec_tables(paper):
    if not SPEC.is_file():
        pytest.skip(f"{SPEC} is not available in this checkout")
    text = SPEC.read_text(encoding="utf-8")
    modes = {"Linear": "linear", "Prompt": "prompt", "Full": "full"}
    modes |= {"Full-model": "full", "Prompt tuning": "prompt", "Linear probing": "linear"}

    per_dataset = {}
    for row in _spec_rows(_spec_section(text, "### 5.3 ")):
        per_dataset[(row[0], "zero", 0)] = [float(v) for v in row[1:]]
    for heading in ("### 5.4 ", "### 5.4b "):
        for row in _spec_rows(_spec_section(text, heading)):
            shots = "all" if row[1] == "All" else int(row[1])
            per_dataset[(row[0], modes[row[2]], shots)] = [float(v) for v in row[3:]]
    assert len(per_dataset) == 80
    for key, values in per_dataset.items():
        shipped = paper.per_dataset[key]
        assert [shipped[k] for k in (*rp.ODINW13_KEYS, "avg")] == values, key

    average = {}
    for row in _spec_rows(_spec_section(text, "### 5.2 ")):
        model = row[0]
        if model not in rp.PAPER_MODELS:
            continue  # DyHead baselines are not shipped
        if row[1]:
            average[(model, "zero", 0)] = (float(row[1]), None)
        settings = [modes[s.strip()] for s in row[2].split("/")]
        for shots, cell in zip((1, 3, 5, 10, "all"), row[3:], strict=True):
            for mode, value in zip(settings, cell.split("/"), strict=True):
                average[(model, mode, shots)] = _num(value.strip())
    assert len(average) == 80
    assert average == paper.average


def test_paper_csv_layout():
    root = rp.paper_data_dir()
    with (root / rp.PER_DATASET_CSV).open() as f:
        header = next(csv.reader(f))
    assert header == ["model", "mode", "shots", "source", *rp.ODINW13_KEYS, "avg"]
    with (root / rp.AVERAGE_CSV).open() as f:
        assert next(csv.reader(f)) == ["model", "mode", "shots", "avg", "std", "source"]


@pytest.mark.parametrize(
    ("task", "key"),
    [
        ("odinw/aquarium", "Aquarium"),
        ("odinw/pascalvoc", "PascalVOC"),
        ("odinw/aerial_drone", "AerialDrone"),
        ("odinw35/CottontailRabbits", "Rabbits"),
        ("odinw/thermalDogsAndPeople", "Thermal"),
        ("Mushrooms", "Mushrooms"),
        ("coco", None),
        ("my/dataset", None),
    ],
)
def test_dataset_key(task, key):
    assert rp.dataset_key(task) == key


@pytest.mark.parametrize(
    ("model", "checkpoint", "expected"),
    [
        ("glip_t", None, "GLIP-T"),
        ("glip_l", None, "GLIP-L"),
        ("glip_t_a", None, "GLIP-T (A)"),
        ("glip_t_c", None, "GLIP-T (C)"),
        ("anything", "/cache/glip_tiny_model_o365.pth", "GLIP-T (B)"),
        ("glip_t", "glip_a_tiny_o365.pth", "GLIP-T (A)"),  # the weights decide
        ("glip_mini", None, None),
    ],
)
def test_paper_model_for(model, checkpoint, expected):
    assert rp.paper_model_for(model, checkpoint) == expected


# ------------------------------------------------------------------------------------------------
# Synthetic sweeps


def write_result(
    root: Path, point: GridPoint, status: str = "complete", ap: float | None = None, **extra
) -> Path:
    run_dir = root / point.task / point.mode / f"shots{point.shots}_seed{point.seed}"
    data = {
        "status": status,
        "task": point.task,
        "model": point.model,
        "mode": point.mode,
        "shots": point.shots,
        "seed": point.seed,
        **extra,
    }
    if ap is not None:
        data["test"] = {"ap": ap, "ap50": ap + 10}
    write_json(data, run_dir / "results.json")
    return run_dir


SEED_OFFSET = {3: -1.0, 30: 0.0, 300: 1.0}


@pytest.fixture
def odinw_sweep(tmp_path, paper) -> Path:
    """A complete released-GLIP-T sweep: zero-shot, prompt and full at 1 shot and all data.

    Every AP is the paper's value for that cell plus -1/0/+1 for seeds 3/30/300, so our mean must
    equal the paper's figure and the population std over seeds is sqrt(2/3).
    """
    ckpt = {"file": f"/cache/{RELEASED_GLIP_T}", "sha256": "0" * 64}
    for key, task in ODINW_TASKS.items():
        zero = paper.dataset("GLIP-T", "zero", 0, key)
        write_result(tmp_path, GridPoint(task, "glip_t", "zero", 0, 3), ap=zero, checkpoint=ckpt)
        for mode in ("prompt", "full"):
            for seed in (3, 30, 300):
                value = paper.dataset("GLIP-T", mode, 1, key) + SEED_OFFSET[seed]
                write_result(tmp_path, GridPoint(task, "glip_t", mode, 1, seed), ap=value, checkpoint=ckpt)
            value = paper.dataset("GLIP-T", mode, "all", key)
            write_result(tmp_path, GridPoint(task, "glip_t", mode, "all", 3), ap=value, checkpoint=ckpt)
    return tmp_path


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_report_of_a_complete_odinw_sweep(odinw_sweep, paper):
    out = odinw_sweep / "report"
    assert rp.main([str(odinw_sweep), "--out", str(out), "--strict"]) == 0
    rows = read_csv(out / "report.csv")
    assert list(rows[0]) == list(rp.REPORT_COLUMNS)
    per_task = [r for r in rows if r["dataset"] != "avg"]
    assert len(per_task) == 13 * 5  # zero + (prompt, full) x (1, all)
    for r in per_task:
        assert r["paper_model"] == "GLIP-T"
        assert float(r["mean"]) == pytest.approx(float(r["paper"]))
        assert float(r["delta"]) == pytest.approx(0.0, abs=1e-9)
        if r["shots"] == "1":
            assert r["n_seeds"] == "3" and r["seeds"] == "3 30 300"
            assert float(r["std"]) == pytest.approx(math.sqrt(2 / 3), abs=1e-4)
        else:
            assert r["n_seeds"] == "1" and r["std"] == ""

    avg = {(r["mode"], r["shots"]): r for r in rows if r["dataset"] == "avg"}
    assert set(avg) == {("zero", "0"), ("prompt", "1"), ("prompt", "all"), ("full", "1"), ("full", "all")}
    prompt1 = avg[("prompt", "1")]
    columns = paper.per_dataset[("GLIP-T", "prompt", 1)]
    assert float(prompt1["mean"]) == pytest.approx(statistics.fmean(columns[k] for k in rp.ODINW13_KEYS))
    assert float(prompt1["std"]) == pytest.approx(math.sqrt(2 / 3), abs=1e-4)  # per-seed averages
    assert (float(prompt1["paper"]), float(prompt1["paper_std"])) == (49.9, 0.7)
    assert prompt1["missing"] == ""

    md = (out / "report.md").read_text()
    assert "Jobs: 117 complete, 0 failed" in md
    assert "Paper reference: GLIP-T" in md and "Cap4M" in md
    assert "### ODinW-13 average" in md
    assert "| prompt |  |  | 49.9 ± 0.8 | 49.9 ± 0.7 |" in md  # ours | paper at 1 shot
    assert "| Aquarium | 18.4 | 18.4 | 32.5 ± 0.8 | 32.5 | 50.9 | 50.9 |" in md
    assert "All expected jobs are complete." in md
    pngs = sorted((out / "plots").glob("*.png"))
    assert [p.name for p in pngs] == ["glip_t_average.png", "glip_t_per_dataset.png"]
    assert all(p.read_bytes()[:8] == PNG_MAGIC and p.stat().st_size > 5000 for p in pngs)
    assert "![glip_t_average](plots/glip_t_average.png)" in md


def test_average_needs_all_13_and_names_the_missing(odinw_sweep):
    for run_dir in (odinw_sweep / "odinw/pothole/prompt").iterdir():
        (run_dir / "results.json").unlink()
    report = rp.build_report(odinw_sweep, paper=rp.PaperReference())
    (mr,) = report.models
    assert mr.averages[("prompt", "1")].mean is None
    assert mr.averages[("prompt", "1")].missing == ["Pothole"]
    assert mr.averages[("full", "1")].mean is not None
    md = rp.render_markdown(report)
    assert "— (1 missing)" in md and "prompt 1, prompt all: Pothole" in md


def test_ddof_and_partial_seeds(odinw_sweep):
    (odinw_sweep / "odinw/aquarium/prompt/shots1_seed300/results.json").unlink()
    report = rp.build_report(odinw_sweep, paper=rp.PaperReference(), ddof=1)
    (mr,) = report.models
    cell = mr.cells[("odinw/rabbits", "prompt", 1)]
    assert cell.std(1) == pytest.approx(1.0)  # sample std of -1, 0, +1
    aquarium = mr.cells[("odinw/aquarium", "prompt", 1)]
    assert aquarium.n == 2 and not aquarium.partial  # nothing says a third seed was expected
    # the average only spans seeds every dataset has
    assert mr.averages[("prompt", "1")].seeds == [3, 30]


def _multirun_yaml(
    root: Path, params: dict[str, str], task_overrides: list[str], protocol: bool = True
) -> None:
    """What Hydra saves as multirun.yaml, reduced to what the report reads."""
    cfg = {
        "hydra": {
            "sweeper": {"params": params},
            "overrides": {"task": task_overrides},
            "runtime": {"choices": {"task": "demo", "model": "glip_mini", "mode": "prompt", "shots": "5"}},
        },
        "task": {"id": "demo"},
        "model": {"name": "glip_mini"},
        "mode": {"name": "prompt"},
        "shots": {"k": 5},
        "seed": 3,
    }
    if protocol:
        cfg["sweep"] = {"name": "t", "canonical_seed": 3}
    root.mkdir(parents=True, exist_ok=True)
    (root / "multirun.yaml").write_text(yaml.safe_dump(cfg))


def test_grid_from_multirun_applies_overrides_and_the_protocol(tmp_path):
    _multirun_yaml(
        tmp_path,
        {"task": "x/a,x/b", "shots": "'0','1',all", "mode": "zero,prompt,linear", "seed": "3,30,300"},
        ["+sweep=t", "model=glip_t", "seed=3,30", "mode=zero,prompt"],
    )
    points, warnings = rp.grid_from_multirun(tmp_path / "multirun.yaml")
    assert warnings == []
    expected = set()
    for task in ("x/a", "x/b"):
        expected.add(GridPoint(task, "glip_t", "zero", 0, 3))
        expected |= {GridPoint(task, "glip_t", "prompt", 1, s) for s in (3, 30)}
        expected.add(GridPoint(task, "glip_t", "prompt", "all", 3))
    assert points == expected


def test_grid_without_the_protocol_is_the_plain_product(tmp_path):
    _multirun_yaml(tmp_path, {}, ["mode=zero,prompt", "shots='0','1'"], protocol=False)
    points, _ = rp.grid_from_multirun(tmp_path / "multirun.yaml")
    assert len(points) == 4 and {p.task for p in points} == {"demo"}


def test_glob_sweeps_are_reported_not_guessed(tmp_path):
    _multirun_yaml(tmp_path, {"task": "glob(odinw/*)"}, [])
    points, warnings = rp.grid_from_multirun(tmp_path / "multirun.yaml")
    assert points == set() and "cannot enumerate" in warnings[0]


def test_failed_running_interrupted_and_missing_jobs_are_listed(tmp_path):
    _multirun_yaml(
        tmp_path,
        {"task": "x/a,x/b", "shots": "'1'", "mode": "prompt", "seed": "3,30"},
        ["+sweep=t", "model=m"],
    )
    write_result(tmp_path, GridPoint("x/a", "m", "prompt", 1, 3), ap=50.0)
    failed = write_result(
        tmp_path,
        GridPoint("x/a", "m", "prompt", 1, 30),
        status="failed",
        error="Traceback (most recent call last):\n  ...\nDataError: bad | json\n",
    )
    write_result(
        tmp_path, GridPoint("x/b", "m", "prompt", 1, 3), status="running", started_at="2025-01-01T00:00"
    )
    # a folder Hydra made for a job that died before writing anything
    started = tmp_path / "x/b/prompt/shots1_seed30/.hydra"
    started.mkdir(parents=True)
    (started / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "task": {"id": "x/b"},
                "model": {"name": "m"},
                "mode": {"name": "prompt"},
                "shots": {"k": 1},
                "seed": 30,
            }
        )
    )
    # and one for a redundant grid point, which must not be listed
    skipped = tmp_path / "x/b/zero/shots1_seed3/.hydra"
    skipped.mkdir(parents=True)
    (skipped / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "task": {"id": "x/b"},
                "model": {"name": "m"},
                "mode": {"name": "zero"},
                "shots": {"k": 1},
                "seed": 3,
                "sweep": {"name": "t"},
            }
        )
    )
    # a job of the grid that never got a folder: add x/c to the grid
    _multirun_yaml(
        tmp_path,
        {"task": "x/a,x/b,x/c", "shots": "'1'", "mode": "prompt", "seed": "3,30"},
        ["+sweep=t", "model=m"],
    )

    report = rp.build_report(tmp_path, paper=rp.PaperReference())
    status = {(j.point.task, j.point.seed): j.status for j in report.jobs}
    assert status == {
        ("x/a", 3): "complete",
        ("x/a", 30): "failed",
        ("x/b", 3): "running",
        ("x/b", 30): "no_results",
        ("x/c", 3): "missing",
        ("x/c", 30): "missing",
    }
    assert rp.main([str(tmp_path), "--no-paper", "--no-plots"]) == 0
    assert rp.main([str(tmp_path), "--no-paper", "--no-plots", "--strict"]) == 1
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Failed jobs (1)" in md and "DataError: bad \\| json" in md
    assert failed.relative_to(tmp_path).as_posix() in md
    assert "## Running or interrupted jobs (1)" in md and "started 2025-01-01T00:00" in md
    assert "## Started jobs without results.json (1)" in md
    assert "## Missing jobs (in the sweep's grid, never launched) (2)" in md
    assert "x/b/zero" not in md
    # x/a prompt 1: one of two seeds, so the cell is marked partial
    assert "| x/a | 50.0 * |" in md
    jobs = read_csv(tmp_path / "report" / "jobs.csv")
    assert list(jobs[0]) == list(rp.JOBS_COLUMNS)
    assert [j["status"] for j in jobs] == [
        "failed",
        "running",
        "no_results",
        "missing",
        "missing",
        "complete",
    ]
    assert jobs[0]["error"] == "DataError: bad | json"
    assert not list(tmp_path.rglob("*.tmp"))


def test_results_without_coordinates_fall_back_to_the_hydra_files(tmp_path):
    run_dir = tmp_path / "some" / "folder"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(
        yaml.safe_dump({"task": {"id": "x", "name": "X"}, "model": {"name": "m"}, "seed": 30})
    )
    (run_dir / ".hydra" / "hydra.yaml").write_text(
        yaml.safe_dump(
            {"hydra": {"runtime": {"choices": {"task": "odinw/aquarium", "mode": "full", "shots": "3"}}}}
        )
    )
    write_json({"status": "complete", "task": "Aquarium", "test": {"ap": 12.5}}, run_dir / "results.json")
    jobs, warnings = rp.collect_jobs(tmp_path)
    assert warnings == []
    assert [(j.point, j.ap) for j in jobs] == [(GridPoint("odinw/aquarium", "m", "full", 3, 30), 12.5)]


def test_unreadable_and_duplicate_results_are_warned_about(tmp_path):
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "results.json").write_text('{"status": ')
    point = GridPoint("x", "m", "prompt", 1, 3)
    write_result(tmp_path / "old", point, status="failed", error="boom")
    write_result(tmp_path / "new", point, ap=1.0)
    jobs, warnings = rp.collect_jobs(tmp_path)
    assert [j.status for j in jobs] == ["complete"]  # the complete one wins
    assert any("unreadable" in w for w in warnings) and any("2 folders" in w for w in warnings)


def test_non_odinw_sweep_averages_over_its_own_tasks(tmp_path):
    for task, seed in itertools.product(("my/a", "my/b"), (3, 30)):
        write_result(tmp_path, GridPoint(task, "m", "linear", 5, seed), ap=10.0 * (task == "my/b") + seed / 3)
    report = rp.build_report(tmp_path, paper=rp.PaperReference())
    (mr,) = report.models
    assert mr.suite == "mean over 2 tasks"
    avg = mr.averages[("linear", "5")]
    assert avg.mean == pytest.approx(statistics.fmean([1, 10, 11, 20]))
    assert avg.std == pytest.approx(4.5)  # per-seed averages 6 and 15
    files = rp.write_report(report, tmp_path / "out")
    assert files["m_average.png"].read_bytes()[:8] == PNG_MAGIC


def test_markdown_table_escapes_pipes():
    lines = rp._md_table(["a", "b"], [["x|y", "line\nbreak"]])
    assert lines[-1] == "| x\\|y | line break |"


def test_no_results_at_all(tmp_path):
    assert rp.main([str(tmp_path), "--no-plots"]) == 0
    assert "Jobs: 0 complete" in (tmp_path / "report" / "report.md").read_text()


def test_cli_rejects_a_missing_folder(tmp_path, capsys):
    with pytest.raises(SystemExit):
        rp.main([str(tmp_path / "nope")])
    assert "not a folder" in capsys.readouterr().err


def test_results_json_numbers_are_percent_like_the_paper(odinw_sweep):
    # Guard against a job writing fractions (0.41) where the schema says percent (41.0).
    for path in odinw_sweep.rglob("results.json"):
        assert json.loads(path.read_text())["test"]["ap"] > 1.0
    assert re.search(r"\| Aquarium \| 18\.4 ", (rp.render_markdown(rp.build_report(odinw_sweep))))
