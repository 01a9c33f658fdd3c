"""adapt.report on synthetic sweep folders, and the shipped paper numbers against the spec's tables."""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import re
import shutil
import signal
import socket
import statistics
from pathlib import Path

import pytest
import yaml

from adapt import report as rp
from adapt.atomic import write_json
from adapt.grid import GridPoint, normalize_shots
from adapt.markdown import md_table
from tests.sweep_stub import CONF, ODINW_TASKS, run_sweep, stub_project, trained

# ../shared beside the repository (as CI checks it out), found from here rather than a fixed path.
SPEC = Path(__file__).resolve().parents[2] / "shared" / "docs" / "glip_spec.md"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


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
        if os.environ.get("ADAPT_REQUIRE_SHARED"):  # set by .ci/run: there the spec must be checked
            pytest.fail(f"{SPEC} is missing (ADAPT_REQUIRE_SHARED is set)")
        pytest.skip(f"{SPEC} is not available beside this checkout")
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


def test_shipped_configs_name_the_papers_rows_and_columns():
    """The report's paper keys come from the configs: task `name`, model `paper`."""
    assert {yaml.safe_load(p.read_text())["name"] for p in (CONF / "task" / "odinw").glob("*.yaml")} == set(
        rp.ODINW13_KEYS
    )
    papers = {p.stem: yaml.safe_load(p.read_text())["paper"] for p in (CONF / "model").glob("*.yaml")}
    assert papers == {
        "glip_t_a": "GLIP-T (A)",
        "glip_t_b": "GLIP-T (B)",
        "glip_t_c": "GLIP-T (C)",
        "glip_t": "GLIP-T",
        "glip_l": "GLIP-L",
        "glip_mini": None,
        "glip_mini_pretrained": None,  # pretrained on adapt's generated world (issue 25)
        # Detector families (adapt.families): no row in GLIP's paper.
        **dict.fromkeys(
            [
                "grounding_dino_t",
                "grounding_dino_b",
                "mm_grounding_dino_t",
                "llmdet_t",
                "owlv2_b16",
                "grounding_dino_mini",
                "mm_grounding_dino_mini",
                "owlv2_mini",
            ]
        ),
    }


# ------------------------------------------------------------------------------------------------
# Sweeps run through adapt's sweeper (tests/sweep_stub.py: the real sweeper and launcher, a stub job)


SEED_OFFSET = {3: -1.0, 30: 0.0, 300: 1.0}


def _odinw_sweep(root: Path, paper: rp.PaperReference, modes: tuple[str, ...]) -> Path:
    """A released-GLIP-T sweep of the 13 ODinW tasks, one invocation per (mode, shots, seeds).

    Every AP is the paper's value for that cell plus -1/0/+1 for seeds 3/30/300, so our mean
    equals the paper's figure. Invocations go into one sweep folder, as a user narrowing the grid
    would run them; the manifest merges their decisions.
    """
    stub_project(root, tasks={t: key for key, t in ODINW_TASKS.items()}, models={"glip_t": "GLIP-T"})
    runs = {"zero": ("0", "3"), "prompt": ("1", "3,300"), "full": ("all", "3")}
    plan = {}
    for key, task in ODINW_TASKS.items():
        for mode in modes:
            shots, seeds = runs[mode]
            value = paper.dataset("GLIP-T", mode, normalize_shots(shots), key)
            for seed in seeds.split(","):
                plan[f"{task} {mode} {normalize_shots(shots)} {seed}"] = {
                    "ap": value + SEED_OFFSET[int(seed)]
                }
    common = ["+sweep=smoke", "model=glip_t", "task=" + ",".join(ODINW_TASKS.values())]
    for mode in modes:
        shots, seeds = runs[mode]
        run_sweep(
            root,
            *common,
            f"mode={mode}",
            f"shots={shots}",
            f"seed={seeds}",
            plan=plan,
        )
    assert sorted(trained(root)) == sorted(plan)
    return root / "multirun" / "smoke" / "glip_t"


@pytest.fixture(scope="module")
def odinw_template(tmp_path_factory, paper) -> Path:
    """Prompt tuning at 1 shot, seeds 3 and 300, on all 13 datasets: 26 jobs through the sweeper."""
    return _odinw_sweep(tmp_path_factory.mktemp("odinw"), paper, ("prompt",))


@pytest.fixture
def odinw_sweep(odinw_template, tmp_path) -> Path:
    copy = tmp_path / "glip_t"
    shutil.copytree(odinw_template, copy)
    return copy


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_report_of_a_complete_odinw_sweep(odinw_sweep, paper):
    out = odinw_sweep / "report"
    assert rp.main([str(odinw_sweep), "--out", str(out), "--strict"]) == 0
    rows = read_csv(out / "report.csv")
    assert list(rows[0]) == list(rp.REPORT_COLUMNS)
    per_task = [r for r in rows if r["dataset"] != "avg"]
    assert [r["dataset"] for r in per_task] == list(rp.ODINW13_KEYS)  # the task configs' names, paper order
    for r in per_task:
        assert r["paper_model"] == "GLIP-T"  # the model config's `paper`
        assert float(r["mean"]) == pytest.approx(float(r["paper"]))
        assert float(r["delta"]) == pytest.approx(0.0, abs=1e-9)
        assert r["n_seeds"] == "2" and r["seeds"] == "3 300"
        assert float(r["std"]) == pytest.approx(1.0)  # population std of -1, +1

    (avg,) = [r for r in rows if r["dataset"] == "avg"]
    columns = paper.per_dataset[("GLIP-T", "prompt", 1)]
    assert (avg["mode"], avg["shots"]) == ("prompt", "1")
    assert float(avg["mean"]) == pytest.approx(statistics.fmean(columns[k] for k in rp.ODINW13_KEYS))
    assert float(avg["std"]) == pytest.approx(1.0)  # over the per-seed averages
    assert (float(avg["paper"]), float(avg["paper_std"])) == (49.9, 0.7)
    assert avg["missing"] == ""

    md = (out / "report.md").read_text()
    assert "Jobs: 26 complete, 0 failed" in md
    assert "Paper reference: GLIP-T" in md and "Cap4M" in md
    assert "### ODinW-13 average" in md
    assert "| prompt | 49.9 ± 1.0 | 49.9 ± 0.7 |" in md  # ours | the paper's, at 1 shot
    assert "| Aquarium | 32.5 ± 1.0 | 32.5 |" in md
    assert "All expected jobs are complete." in md
    pngs = sorted((out / "plots").glob("*.png"))
    assert [p.name for p in pngs] == ["glip_t_average.png", "glip_t_per_dataset.png"]
    assert all(p.read_bytes()[:8] == PNG_MAGIC and p.stat().st_size > 5000 for p in pngs)
    assert "![glip_t_average](plots/glip_t_average.png)" in md
    jobs = read_csv(out / "jobs.csv")
    assert len(jobs) == 26 and all(j["job_id"] for j in jobs)  # the launcher's job numbers


@pytest.mark.slow
def test_report_of_a_three_mode_odinw_sweep(tmp_path, paper):
    """Zero-shot, prompt tuning and full fine-tuning: the 0 column is shared by every mode's table."""
    sweep_dir = _odinw_sweep(tmp_path, paper, ("zero", "prompt", "full"))
    assert rp.main([str(sweep_dir), "--strict", "--no-plots"]) == 0
    rows = read_csv(sweep_dir / "report" / "report.csv")
    avg = {(r["mode"], r["shots"]): r for r in rows if r["dataset"] == "avg"}
    assert set(avg) == {("zero", "0"), ("prompt", "1"), ("full", "all")}
    md = (sweep_dir / "report" / "report.md").read_text()
    assert "Jobs: 52 complete, 0 failed" in md
    # columns 0 | 0 paper | 1 | 1 paper | all | all paper
    # (no zero-shot or full-data prompt runs: empty, next to the paper's figures where it has them)
    assert "| prompt |  |  | 49.9 ± 1.0 | 49.9 ± 0.7 |  | 62.4 |" in md
    # Aquarium: zero-shot 17.4 (the paper's 18.4 minus seed 3's offset), then prompt at 1 shot
    assert "| Aquarium | 17.4 | 18.4 | 32.5 ± 1.0 | 32.5 |" in md
    assert "### full-model fine-tuning (`mode=full`)" in md
    assert "| Aquarium | 17.4 | 18.4 | 51.5 | 52.5 |" in md  # full data: the paper's 52.5, seed 3


def test_average_needs_all_13_and_names_the_missing(odinw_sweep):
    for run_dir in (odinw_sweep / "odinw/pothole/prompt").iterdir():
        (run_dir / "results.json").unlink()
    report = rp.build_report(odinw_sweep, paper=rp.PaperReference())
    (mr,) = report.models
    assert mr.averages[("prompt", "1")].mean is None
    assert mr.averages[("prompt", "1")].missing == ["Pothole"]
    assert len(report.by_status(rp.MISSING)) == 2  # the manifest still plans them
    md = rp.render_markdown(report)
    assert "— (1 missing)" in md and "prompt 1: Pothole" in md


def test_ddof_and_partial_seeds(odinw_sweep):
    (odinw_sweep / "odinw/aquarium/prompt/shots1_seed300/results.json").unlink()
    report = rp.build_report(odinw_sweep, paper=rp.PaperReference(), ddof=1)
    (mr,) = report.models
    cell = mr.cells[("odinw/rabbits", "prompt", 1)]
    assert cell.std(1) == pytest.approx(math.sqrt(2))  # sample std of -1, +1
    aquarium = mr.cells[("odinw/aquarium", "prompt", 1)]
    assert aquarium.n == 1 and aquarium.partial  # the manifest planned two seeds
    # the average only spans seeds every dataset has
    assert mr.averages[("prompt", "1")].seeds == [3]


def test_failed_killed_and_missing_jobs_are_listed(tmp_path):
    stub_project(tmp_path, tasks={"x/a": "x/a", "x/b": "x/b", "x/c": "x/c"}, models={"m": None})
    plan = {
        "x/a prompt 1 3": {"ap": 50.0},
        "x/a prompt 1 30": {"fail": "bad | json"},
        "x/b prompt 1 3": {"kill": True},  # SIGKILL: the sweep process dies with it
    }
    result = run_sweep(
        tmp_path,
        "+sweep=smoke",
        "model=m",
        "task=x/a,x/b,x/c",
        "mode=prompt,zero",
        "shots=1",
        "seed=3,30",
        plan=plan,
        check=False,
    )
    assert result.returncode == -signal.SIGKILL
    assert trained(tmp_path) == ["x/a prompt 1 3", "x/a prompt 1 30", "x/b prompt 1 3"]
    sweep_dir = tmp_path / "multirun" / "smoke" / "m"

    report = rp.build_report(sweep_dir, paper=rp.PaperReference())
    status = {(j.point.task, j.point.seed): j.status for j in report.jobs}
    assert status == {
        ("x/a", 3): "complete",
        ("x/a", 30): "failed",
        ("x/b", 3): "died",  # its pid is gone from this host
        ("x/b", 30): "missing",
        ("x/c", 3): "missing",
        ("x/c", 30): "missing",
    }  # the 6 zero-shot points at shots=1 are redundant: not jobs
    assert rp.main([str(sweep_dir), "--no-paper", "--no-plots"]) == 0
    assert rp.main([str(sweep_dir), "--no-paper", "--no-plots", "--strict"]) == 1
    md = (sweep_dir / "report" / "report.md").read_text()
    assert "## Failed jobs (1)" in md and "RuntimeError: bad \\| json" in md
    assert "x/a/prompt/shots1_seed30" in md
    killed = json.loads((sweep_dir / "x/b/prompt/shots1_seed3/results.json").read_text())
    assert killed["status"] == "running" and killed["pid"] > 0
    assert "## Died jobs (the process is gone: killed, out of memory or out of time) (1)" in md
    assert (
        f"pid {killed['pid']} on {socket.gethostname()} is no longer running (started "
        f"{killed['started_at']} on {socket.gethostname()} (pid {killed['pid']}))"
    ) in md
    assert "## Missing jobs (planned by the sweep, no results.json) (3)" in md
    # the basic launcher returns job ids when its batch is done; this sweep died before that
    assert md.count("| launched, never started |") == 3
    assert "/zero/" not in md
    # x/a prompt 1: one of two seeds, so the cell is marked partial
    assert "| x/a | 50.0 * |" in md
    jobs = read_csv(sweep_dir / "report" / "jobs.csv")
    assert list(jobs[0]) == list(rp.JOBS_COLUMNS)
    assert [j["status"] for j in jobs] == ["failed", "died", "missing", "missing", "missing", "complete"]
    assert jobs[0]["error"] == "RuntimeError: bad | json"
    assert not list(tmp_path.rglob("*.tmp"))


def test_results_outside_a_sweep_are_placed_by_their_own_fields(tmp_path):
    run_dir = tmp_path / "some" / "folder"
    config = {
        "task": {"id": "odinw/aquarium", "name": "Aquarium"},
        "model": {"name": "m", "paper": "GLIP-L"},
        "mode": {"name": "full"},
        "shots": {"k": 3},
        "seed": 30,
    }
    write_json({"status": "complete", "config": config, "test": {"ap": 12.5}}, run_dir / "results.json")
    jobs, warnings = rp.collect_jobs(tmp_path)
    assert warnings == [
        f"no sweep manifest under {tmp_path.resolve()}: jobs that never started are not listed"
    ]
    assert [(j.point, j.ap, j.dataset, j.paper_model) for j in jobs] == [
        (GridPoint("odinw/aquarium", "m", "full", 3, 30), 12.5, "Aquarium", "GLIP-L")
    ]


def write_result(
    root: Path, point: GridPoint, status: str = "complete", ap: float | None = None, **extra
) -> Path:
    """A results.json of a single run gathered into a folder by hand (no sweep, no manifest)."""
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


def test_unreadable_and_duplicate_results_are_warned_about(tmp_path):
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "results.json").write_text('{"status": ')
    point = GridPoint("x", "m", "prompt", 1, 3)
    write_result(tmp_path / "old", point, status="failed", error="boom")
    write_result(tmp_path / "new", point, ap=1.0)
    jobs, warnings = rp.collect_jobs(tmp_path)
    assert [j.status for j in jobs] == ["complete"]  # the complete one wins
    assert any("unreadable" in w for w in warnings) and any("2 folders" in w for w in warnings)


def test_non_odinw_runs_average_over_their_own_tasks(tmp_path):
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


def test_tasks_keeps_a_subset_and_averages_over_it(tmp_path, capsys):
    """`--tasks`: a folder with side runs (the world's seen-word zero-shot check beside its by-shots
    sweep) is reported on the named tasks; the average is over them alone."""
    for task, ap in (("world/synonyms", 10.0), ("world/novel", 20.0), ("world/seen", 90.0)):
        write_result(tmp_path, GridPoint(task, "m", "zero", 0, 3), ap=ap)
    (mr,) = rp.build_report(
        tmp_path, paper=rp.PaperReference(), tasks=["world/synonyms", "world/novel"]
    ).models
    assert mr.suite == "mean over 2 tasks" and mr.averages[("zero", "0")].mean == pytest.approx(15.0)
    assert rp.main([str(tmp_path), "--no-plots", "--no-paper", "--tasks", "world/novel"]) == 0
    assert "Seen words" not in (tmp_path / "report" / "report.md").read_text()
    with pytest.raises(SystemExit):
        rp.main([str(tmp_path), "--no-plots", "--tasks", "world/nope"])
    assert (
        "no jobs of task world/nope; it holds world/novel, world/seen, world/synonyms"
        in capsys.readouterr().err
    )


def test_markdown_table_escapes_pipes():
    lines = md_table(["a|b", "c"], [["x|y", "line\nbreak"]])
    assert lines == ["| a\\|b | c |", "|---|---|", "| x\\|y | line break |"]


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
    assert re.search(r"\| Aquarium \| 32\.5 ± 1\.0 ", rp.render_markdown(rp.build_report(odinw_sweep)))


def test_a_running_job_whose_process_is_gone_from_this_host_is_listed_as_died(tmp_path):
    """kill -9, the OOM killer: results.json still says "running"; the report checks the pid."""
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    here = socket.gethostname()
    started = {"status": "running", "started_at": "2026-01-02T03:04:05+00:00", "shots": 1, "seed": 3}
    point = {"task": "x/a", "model": "m", "mode": "prompt"}
    for name, host, pid in [("gone", here, dead.pid), ("alive", here, os.getpid()), ("elsewhere", "n7", 1)]:
        write_json(
            {**started, **point, "seed": len(name), "host": host, "pid": pid},
            tmp_path / name / "results.json",
        )
    jobs, _ = rp.collect_jobs(tmp_path)
    status = {j.path.name: j.status for j in jobs}
    assert status == {"gone": "died", "alive": "running", "elsewhere": "running"}
    (gone,) = [j for j in jobs if j.status == rp.DIED]
    assert gone.note == (
        f"pid {dead.pid} on {here} is no longer running (started 2026-01-02T03:04:05+00:00 on {here} "
        f"(pid {dead.pid}))"
    )
    md = rp.render_markdown(rp.build_report(tmp_path, paper=None))
    assert "2 running or interrupted, 1 died," in md and gone.note in md
