"""Sweeps: the protocol's grid rule, resumability, fault isolation, the manifest, and the configs.

Three levels: unit tests of adapt.runs.sweep; multiruns through Hydra with a stub job (real sweep yaml,
real sweeper and launcher, real report, no model; tests/sweep_stub.py); and `python -m adapt.run`
sweeps with glip_mini: a small one by default (and a job killed mid-run), the full grid behind
`-m slow`.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from adapt import grid
from adapt.atomic import write_json
from adapt.grid import GridPoint, point_skip_reason
from adapt.report import ODINW13_KEYS
from adapt.runs import manifest, sweep
from tests.sweep_stub import CONF, run_sweep, stub_project, trained

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def job_cfg(
    task="odinw/aquarium", model="glip_t", mode="prompt", shots=5, seed=3, in_sweep=True, **sweep_node
):
    cfg = {
        "task": {"name": task},
        "model": {"name": model},
        "mode": {"name": mode},
        "shots": shots,
        "seed": seed,
    }
    if in_sweep:
        cfg["sweep"] = {"name": "t", "canonical_seed": 3, **sweep_node}
    return OmegaConf.create(cfg)


# ------------------------------------------------------------------------------------------------
# The grid rule


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, 0), (5, 5), ("5", 5), ("'10'", 10), ("all", "all"), ("ALL", "all"), ("5shot", 5), ("shot3", 3)],
)
def test_normalize_shots(value, expected):
    assert grid.normalize_shots(value) == expected


@pytest.mark.parametrize("value", ["few", True, "5x", None, -1, "-1"])
def test_normalize_shots_rejects(value):
    with pytest.raises(ValueError):
        grid.normalize_shots(value)


@pytest.mark.parametrize(
    ("mode", "shots", "seed", "runs"),
    [
        ("zero", 0, 3, True),  # zero-shot: once per task and model
        ("zero", 0, 30, False),
        ("zero", 5, 3, False),
        ("zero", "all", 3, False),
        ("prompt", 0, 3, False),  # shots=0 is zero-shot, not a prompt run
        ("prompt", 1, 3, True),
        ("prompt", 1, 30, True),
        ("full", 10, 300, True),
        ("linear", "all", 3, True),  # full data: once, with the canonical seed
        ("linear", "all", 30, False),
        ("lora", "all", 300, False),
    ],
)
def test_point_skip_reason(mode, shots, seed, runs):
    reason = point_skip_reason(GridPoint("odinw/aquarium", "glip_t", mode, shots, seed))
    assert (reason is None) == runs, reason


def test_canonical_seed_moves_the_once_only_runs():
    assert point_skip_reason(GridPoint("t", "m", "zero", 0, 30), canonical_seed=30) is None
    assert point_skip_reason(GridPoint("t", "m", "zero", 0, 3), canonical_seed=30) is not None
    assert point_skip_reason(GridPoint("t", "m", "full", "all", 30), canonical_seed=30) is None


def test_odinw13_grid_collapses_to_the_papers_runs():
    points = sweep.planned_points(CONF / "sweep" / "odinw13.yaml", "glip_t")
    tasks = list(dict.fromkeys(p.task for p in points))
    names = [OmegaConf.load(CONF / "task" / f"{t}.yaml").name for t in tasks]
    assert names == list(ODINW13_KEYS)  # the paper's column order
    # per dataset: 1 zero-shot + 3 modes x 4 few-shot settings x 3 seeds + 3 modes x full data
    assert len(points) == 13 * (1 + 3 * 4 * 3 + 3)
    assert {(p.mode, p.shots, p.seed) for p in points if p.mode == "zero"} == {("zero", 0, 3)}
    assert {p.seed for p in points if p.shots == "all"} == {3}
    assert {p.shots for p in points} == {0, 1, 3, 5, 10, "all"}
    assert {p.seed for p in points} == {3, 30, 300}


# ------------------------------------------------------------------------------------------------
# Bookkeeping: completed, record_failure, skip_reason, run_job


def test_grid_point_reads_config_keys_and_prefers_choices():
    cfg = job_cfg(shots="all")
    assert sweep.grid_point(cfg) == GridPoint("odinw/aquarium", "glip_t", "prompt", "all", 3)
    choices = {"task": "odinw/rabbits", "model": "glip_l", "mode": "full", "shots": "10"}
    assert sweep.grid_point(cfg, choices) == GridPoint("odinw/rabbits", "glip_l", "full", 10, 3)
    plain = OmegaConf.create(
        {"task": {"id": "x"}, "model": {"name": "m"}, "mode": {"name": "zero"}, "shots": 0}
    )
    legacy = OmegaConf.merge(plain, {"shots": {"k": 3}, "seed": 1})  # shots as the old config group
    assert sweep.grid_point(legacy).shots == 3
    assert sweep.grid_point(OmegaConf.merge(plain, {"seed": 1})).shots == 0
    with pytest.raises(KeyError, match="seed"):
        sweep.grid_point(plain)


def test_completed_only_for_status_complete(tmp_path):
    assert not sweep.completed(tmp_path)
    for status, done in [("running", False), ("failed", False), ("complete", True)]:
        write_json({"status": status}, tmp_path / "results.json")
        assert sweep.completed(tmp_path) is done
    (tmp_path / "results.json").write_text('{"status": "compl')  # a torn file is not complete
    assert not sweep.completed(tmp_path)


def test_write_json_atomic_leaves_no_temp_files(tmp_path):
    write_json({"a": 1}, tmp_path / "sub" / "results.json")
    write_json({"a": 2}, tmp_path / "sub" / "results.json")
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["results.json"]
    assert json.loads((tmp_path / "sub" / "results.json").read_text()) == {"a": 2}


def test_record_failure_keeps_progress_and_the_traceback(tmp_path):
    sweep.record_start(tmp_path, job_cfg())
    data = json.loads((tmp_path / "results.json").read_text())
    data["val_history"] = [{"step": 0, "ap": 1.0}]
    write_json(data, tmp_path / "results.json")

    def boom():
        raise RuntimeError("annotation file is malformed")

    try:
        boom()
    except RuntimeError as exc:
        sweep.record_failure(tmp_path, exc, job_cfg())
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["status"] == "failed"
    assert data["val_history"] == [{"step": 0, "ap": 1.0}]
    assert "Traceback" in data["error"] and "in boom" in data["error"]
    assert data["error"].rstrip().endswith("RuntimeError: annotation file is malformed")
    assert (data["task"], data["mode"], data["shots"], data["seed"]) == ("odinw/aquarium", "prompt", 5, 3)
    assert data["config"]["model"]["name"] == "glip_t"
    assert not sweep.completed(tmp_path)


def test_the_jobs_writes_merge_into_the_sweeps_start_record(tmp_path):
    """One merging writer: the training job's record keeps where and when the attempt started,
    and a resumed run keeps its validation history and time until its next evaluation."""
    from adapt.runs.record import update_record
    from adapt.runs.results import RunRecord

    sweep.record_start(tmp_path, job_cfg())
    started = json.loads((tmp_path / "results.json").read_text())
    assert (started["host"], started["pid"]) == (socket.gethostname(), os.getpid())
    # what the interrupted attempt had written, plus fields that only describe how an attempt ended
    history = [{"step": 10, "epoch": 0, "ap": 1.5}]
    update_record(
        tmp_path, {"val_history": history, "wall_time_s": 12.5, "error": "old", "test": {"ap": 3.0}}
    )

    record = RunRecord(tmp_path, job_cfg())
    record.write("running")  # the resumed job's first write
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["started_at"] == started["started_at"] and data["pid"] == os.getpid()
    assert data["val_history"] == history and data["wall_time_s"] == 12.5
    assert "error" not in data and "test" not in data
    record.update(val_history=[*history, {"step": 20, "epoch": 1, "ap": 2.0}], wall_time_s=20.0)
    record.update(test={"ap": 2.5})
    record.write("complete")
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["status"] == "complete" and data["test"] == {"ap": 2.5} and len(data["val_history"]) == 2
    assert data["started_at"] == started["started_at"] and data["host"] == socket.gethostname()


def test_skip_reason(tmp_path):
    # a single run is never skipped, even at a point a sweep would collapse
    assert sweep.skip_reason(job_cfg(mode="zero", shots=5, in_sweep=False), tmp_path) is None
    assert "redundant" in sweep.skip_reason(job_cfg(mode="zero", shots=5), tmp_path)
    assert sweep.skip_reason(job_cfg(), tmp_path) is None
    write_json({"status": "failed"}, tmp_path / "results.json")
    assert sweep.skip_reason(job_cfg(), tmp_path) is None  # failed jobs run again
    write_json({"status": "complete"}, tmp_path / "results.json")
    assert "already complete" in sweep.skip_reason(job_cfg(), tmp_path)
    assert sweep.skip_reason(job_cfg(rerun_complete=True), tmp_path) is None


def test_run_job_isolates_failures_inside_a_sweep(tmp_path):
    def fail(cfg):
        raise ValueError("bad")

    assert sweep.run_job(job_cfg(), fail, run_dir=tmp_path / "a") is None
    assert json.loads((tmp_path / "a" / "results.json").read_text())["status"] == "failed"
    # outside a sweep the user wants the exception, and the folder still says what happened
    with pytest.raises(ValueError, match="bad"):
        sweep.run_job(job_cfg(in_sweep=False), fail, run_dir=tmp_path / "b")
    assert json.loads((tmp_path / "b" / "results.json").read_text())["status"] == "failed"


def test_run_job_marks_start_skips_and_returns(tmp_path):
    seen = []

    def ok(cfg):
        seen.append(json.loads((tmp_path / "results.json").read_text())["status"])
        write_json({"status": "complete"}, tmp_path / "results.json")
        return 42.0

    assert sweep.run_job(job_cfg(), ok, run_dir=tmp_path) == 42.0
    assert seen == ["running"]  # a job killed mid-way leaves "running", not nothing
    assert sweep.run_job(job_cfg(), ok, run_dir=tmp_path) is None  # complete: skipped
    assert sweep.run_job(job_cfg(mode="zero", shots=1), ok, run_dir=tmp_path / "x") is None
    assert len(seen) == 1
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------------------
# The configs compose (without depending on the rest of the tree being complete)


def _compose_hydra(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(overrides=list(overrides), return_hydra_config=True)


@pytest.mark.parametrize(
    ("launcher", "target"),
    [
        ("local", "hydra._internal.core_plugins.basic_launcher.BasicLauncher"),
        ("joblib", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
        ("slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
    ],
)
def test_launcher_presets_compose(launcher, target):
    if launcher != "local":
        pytest.importorskip(
            f"hydra_plugins.hydra_{'joblib' if launcher == 'joblib' else 'submitit'}_launcher"
        )
    cfg = _compose_hydra("+sweep=odinw13", f"+launcher={launcher}")
    assert cfg.hydra.launcher._target_ == target
    assert cfg.hydra.runtime.choices["hydra/launcher"] == {"local": "basic", "slurm": "submitit_slurm"}.get(
        launcher, launcher
    )
    if launcher == "slurm":
        assert cfg.hydra.launcher.gpus_per_node == 1 and cfg.hydra.launcher.tasks_per_node == 1


@pytest.mark.parametrize("name", ["odinw13", "smoke"])
def test_sweep_folders_are_deterministic(name):
    cfg = _compose_hydra(f"+sweep={name}")
    raw = OmegaConf.to_container(cfg.hydra.sweep, resolve=False)
    assert "now:" not in raw["dir"] and "now:" not in raw["subdir"]
    for key in ("task", "mode"):
        assert f"choices.{key}" in raw["subdir"]
    assert "shots${shots}" in raw["subdir"]  # the plain value: shots5, shotsall
    assert "${seed}" in raw["subdir"] and "choices.model" in raw["dir"]
    assert cfg.sweep.canonical_seed == 3 and cfg.sweep.rerun_complete is False


@pytest.mark.parametrize("name", ["odinw13", "smoke"])
def test_sweeps_compose_with_the_main_config(name):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    cfg = _compose_hydra_main(f"+sweep={name}", "+launcher=joblib")
    assert cfg.sweep.name == name and cfg.resume == "auto"
    assert cfg.hydra.sweeper._target_ == "hydra_plugins.adapt_sweeper.protocol_sweeper.ProtocolSweeper"
    assert cfg.hydra.launcher.n_jobs == 2
    # the composed job is a complete one: every grid coordinate resolves
    job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    assert sweep.grid_point(job, {}) == GridPoint("demo", "glip_mini_pretrained", "prompt", 5, 3)


def _compose_hydra_main(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


# ------------------------------------------------------------------------------------------------
# Real Hydra multiruns with a stub job (tests/sweep_stub.py): sweeper, launcher, manifest, report


def _manifest(sweep_dir: Path) -> dict[tuple, manifest.ManifestJob]:
    jobs = manifest.read_manifest(sweep_dir / manifest.MANIFEST_FILE)
    return {(j.point.task, j.point.mode, j.point.shots, j.point.seed): j for j in jobs}


def test_stub_multirun_resumes_isolates_failure_and_reports(tmp_path):
    stub_project(tmp_path)
    grid = ["+sweep=smoke", "task=a,b", "shots=3", "mode=prompt,linear", "seed=3,30"]
    plan = {"b linear 3 30": {"fail": "stub: malformed annotations"}}
    first = run_sweep(tmp_path, *grid, plan=plan)
    assert len(trained(tmp_path)) == 8  # every point of this grid is a real run
    sweep_dir = tmp_path / "multirun" / "smoke" / "glip_mini"
    failed = json.loads((sweep_dir / "b" / "linear" / "shots3_seed30" / "results.json").read_text())
    assert failed["status"] == "failed" and "stub: malformed annotations" in failed["error"]
    # the manifest: every point launched, with its folder and the basic launcher's job number
    decided = _manifest(sweep_dir)
    assert len(decided) == 8 and {j.decision for j in decided.values()} == {"launched"}
    assert sorted(int(j.job_id) for j in decided.values()) == list(range(8))
    assert decided[("b", "linear", 3, 30)].folder == (sweep_dir / "b/linear/shots3_seed30").resolve()
    assert "decisions written to" in first.stdout

    # the re-run trains only the failed job; the other 7 are complete
    second = run_sweep(tmp_path, *grid, plan=plan)
    assert trained(tmp_path)[8:] == ["b linear 3 30"]
    # the sweeper left the 7 complete jobs out of the launch: they never reached the launcher
    assert re.search(
        r"8 grid points \(\d+ configurations composed\), 1 jobs to launch \(skipped: 7 already complete\)",
        second.stdout,
    )
    assert "Launching 1 jobs locally" in second.stdout
    decided = _manifest(sweep_dir)
    assert sorted(j.decision for j in decided.values()) == ["complete"] * 7 + ["launched"]
    assert decided[("b", "linear", 3, 30)].job_id == "0"  # the new launch's number
    assert decided[("a", "prompt", 3, 3)].job_id == "0"  # kept from the launch that completed it
    data = json.loads((sweep_dir / manifest.MANIFEST_FILE).read_text())
    assert [i["launched"] for i in data["invocations"]] == [8, 1]

    from adapt.report import main as report_main

    assert report_main([str(sweep_dir), "--no-paper"]) == 0
    md = (sweep_dir / "report" / "report.md").read_text()
    assert "## Failed jobs (1)" in md and "RuntimeError: stub: malformed annotations" in md
    assert "b/linear/shots3_seed30" in md
    # a (prompt, 3 shots): seeds 3 and 30 -> 40.1 and 41.0: mean 40.55, population std 0.45
    assert "| a | 40.5 ± 0.4" in md or "| a | 40.6 ± 0.5" in md
    assert "mean over 2 tasks average" in md
    pngs = sorted((sweep_dir / "report" / "plots").glob("*.png"))
    assert pngs and all(p.read_bytes()[:8] == PNG_MAGIC for p in pngs)


@pytest.mark.slow
def test_stub_sweep_zero_shot_and_full_data_run_once_with_joblib(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    stub_project(tmp_path)
    grid = ["+sweep=smoke", "task=a", "shots=0,all", "mode=zero,prompt", "seed=3,30", "+launcher=joblib"]
    result = run_sweep(tmp_path, *grid)
    assert sorted(trained(tmp_path)) == ["a prompt all 3", "a zero 0 3"]
    from adapt.report import build_report

    report = build_report(tmp_path / "multirun" / "smoke", paper=None)
    assert sorted(j.status for j in report.jobs) == ["complete", "complete"]  # skipped points are not jobs
    # the 6 redundant points were never launched: no job folder, no Hydra job config
    assert re.search(
        r"8 grid points \(\d+ configurations composed\), 2 jobs to launch \(skipped: 6 redundant",
        result.stdout,
    )
    sweep_dir = tmp_path / "multirun" / "smoke" / "glip_mini"
    job_dirs = sorted(p.parent.relative_to(sweep_dir) for p in sweep_dir.rglob(".hydra"))
    assert [str(d) for d in job_dirs] == ["a/prompt/shotsall_seed3", "a/zero/shots0_seed3"]
    decided = _manifest(sweep_dir)
    assert sorted(j.decision for j in decided.values()) == ["launched"] * 2 + ["redundant"] * 6
    # joblib's job ids are "<job name>_<number>"
    assert all(
        j.job_id and j.job_id.endswith(("_0", "_1")) for j in decided.values() if j.decision == "launched"
    )


def test_dry_run_lists_the_papers_jobs_and_launches_none(tmp_path):
    stub_project(
        tmp_path,
        tasks={"odinw/aquarium": "Aquarium", "odinw/rabbits": "Rabbits"},
        models={"glip_t": "GLIP-T"},
    )
    # odinw13's own grid narrowed to two tasks, two modes and two shots: 2 x 2 x 2 x 3 = 24 points,
    # of which 2 x (1 zero-shot + 1 prompt x 1 shot x 3 seeds) = 8 run.
    grid = ["+sweep=odinw13", "model=glip_t", "task=odinw/aquarium,odinw/rabbits", "mode=zero,prompt"]
    result = run_sweep(tmp_path, *grid, "shots=0,1", "sweep.dry_run=true")
    assert (
        "24 grid points (3 configurations composed), 8 jobs to launch (skipped: 16 redundant" in result.stdout
    )
    launches = [
        line.split("would launch: ", 1)[1] for line in result.stdout.splitlines() if "would launch" in line
    ]
    assert len(launches) == 8
    assert sum("mode=zero" in job for job in launches) == 2
    assert all("shots=0" in job and "seed=3" in job for job in launches if "mode=zero" in job)
    assert not trained(tmp_path)
    decided = _manifest(tmp_path / "multirun" / "odinw13" / "glip_t")
    assert sorted(j.decision for j in decided.values()) == ["dry_run"] * 8 + ["redundant"] * 16
    aquarium = decided[("odinw/aquarium", "prompt", 1, 30)]
    assert (aquarium.dataset, aquarium.paper_model, aquarium.job_id) == ("Aquarium", "GLIP-T", None)
    assert {"task=odinw/aquarium", "mode=prompt", "shots=1", "seed=30"} <= set(aquarium.overrides)
    # the report plans them: every job the dry run would launch is missing
    from adapt.report import build_report

    report = build_report(tmp_path / "multirun" / "odinw13", paper=None)
    assert [j.status for j in report.jobs] == ["missing"] * 8
    assert {j.note for j in report.jobs} == {"not launched (dry_run)"}

    # Composing every point as the launcher will gives the same decisions, folders and fields.
    fast = json.loads((tmp_path / "multirun" / "odinw13" / "glip_t" / "sweep_manifest.json").read_text())
    shutil.rmtree(tmp_path / "multirun")
    result = run_sweep(tmp_path, *grid, "shots=0,1", "sweep.dry_run=true", "sweep.compose_every_point=true")
    assert "24 grid points (24 configurations composed)" in result.stdout
    slow = json.loads((tmp_path / "multirun" / "odinw13" / "glip_t" / "sweep_manifest.json").read_text())

    def strip(job: dict) -> dict:  # when it was decided, and the one override that differs on purpose
        kept = {k: v for k, v in job.items() if k != "decided_at"}
        kept["overrides"] = [o for o in job["overrides"] if not o.startswith("sweep.compose_every_point=")]
        return kept

    assert [strip(j) for j in fast["jobs"]] == [strip(j) for j in slow["jobs"]]


# ------------------------------------------------------------------------------------------------
# End to end: python -m adapt.run with glip_mini on two COCO datasets built here


def _write_coco_dataset(root: Path, malformed: set[str]) -> None:
    """Two-image-per-split COCO dataset; train files per (mode, shots, seed) so one job can break."""
    from PIL import Image, ImageDraw

    (root / "images").mkdir(parents=True)
    images, annotations = [], []
    for i in range(6):
        img = Image.new("RGB", (96, 64), (30 * i % 255, 90, 160))
        ImageDraw.Draw(img).rectangle([10 + i, 12, 50 + i, 48], fill=(250, 200, 40))
        img.save(root / "images" / f"{i}.jpg")
        images.append({"id": i + 1, "file_name": f"{i}.jpg", "width": 96, "height": 64})
        annotations.append(
            {
                "id": i + 1,
                "image_id": i + 1,
                "category_id": 1,
                "bbox": [10 + i, 12, 41, 37],
                "area": 1517,
                "iscrowd": 0,
            }
        )
    categories = [{"id": 1, "name": "box", "supercategory": "none"}]

    def split(ids):
        return {
            "images": [im for im in images if im["id"] in ids],
            "annotations": [a for a in annotations if a["image_id"] in ids],
            "categories": categories,
        }

    for mode, shots, seed in itertools.product(("prompt", "linear"), (1, 3), (3, 30)):
        name = f"train_{mode}_shots{shots}_seed{seed}.json"
        text = "{not json" if name in malformed else json.dumps(split({1, 2, 3, 4}))
        (root / name).write_text(text)
    (root / "val.json").write_text(json.dumps(split({5})))
    (root / "test.json").write_text(json.dumps(split({6})))


def _e2e_project(root: Path) -> None:
    conf = root / "conf" / "task" / "e2e"
    conf.mkdir(parents=True)
    for name, malformed in (
        ("a", set()),
        ("b", {"train_linear_shots3_seed30.json", "train_linear_shots1_seed3.json"}),
    ):
        _write_coco_dataset(root / "data" / name, malformed)
        # The train file is chosen per (mode, shots, seed) so that chosen jobs of the grid fail.
        (conf / f"{name}.yaml").write_text(
            textwrap.dedent(
                f"""
                id: e2e/{name}
                name: e2e/{name}
                data_root: {root / "data" / name}
                image_dir: images
                train_json: train_${{mode.name}}_shots${{shots}}_seed${{seed}}.json
                val_json: val.json
                test_json: test.json
                categories: [box]
                """
            )
        )


def _adapt_run(root: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "adapt.run",
        "-m",
        "+sweep=smoke",
        "model=glip_mini",
        "logger=none",
        "data.num_workers=0",
        f"hydra.searchpath=[file://{root / 'conf'}]",
        *overrides,
    ]


# The test images are 96x64: keep them small instead of the official 800-pixel rescale.
SMALL_INPUT = [
    "model.arch.input.min_size_train=[32]",
    "model.arch.input.max_size_train=64",
    "model.arch.input.min_size_test=32",
    "model.arch.input.max_size_test=64",
]


def _e2e_sweep(tmp_path: Path, grid: list[str]) -> tuple[Path, dict[Path, dict]]:
    """Run `grid` twice: once to train (one job fails), once to check that nothing complete reruns."""
    _e2e_project(tmp_path)
    cmd = _adapt_run(tmp_path, "trainer=debug", *SMALL_INPUT, *grid)
    env = {**os.environ, "HYDRA_FULL_ERROR": "1", "WANDB_MODE": "disabled"}
    first = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=1800, env=env)
    assert first.returncode == 0, first.stderr[-4000:]
    sweep_dir = tmp_path / "multirun" / "smoke" / "glip_mini"
    results = {p: json.loads(p.read_text()) for p in sweep_dir.rglob("results.json")}
    mtimes = {p: p.stat().st_mtime_ns for p, r in results.items() if r["status"] == "complete"}
    second = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=1800, env=env)
    assert second.returncode == 0, second.stderr[-4000:]
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items()), "a complete job ran again"
    failed = sum(r["status"] == "failed" for r in results.values())
    assert f"{failed} jobs to launch" in second.stdout  # only the failed ones
    return sweep_dir, results


def test_end_to_end_multirun_with_glip_mini(tmp_path):
    """The default suite's one real multirun: 2 tasks x 2 modes, one job failing, then resumed."""
    grid = ["task=e2e/a,e2e/b", "shots=1", "mode=prompt,linear", "seed=3"]
    sweep_dir, results = _e2e_sweep(tmp_path, grid)
    assert sorted(r["status"] for r in results.values()) == ["complete"] * 3 + ["failed"]
    for r in results.values():  # the sweep's start record survives the job's own writes
        assert r["host"] == socket.gethostname() and r["started_at"] and r["pid"] > 0
    from adapt.report import main as report_main

    assert report_main([str(sweep_dir)]) == 0
    md = (sweep_dir / "report" / "report.md").read_text()
    assert "## Failed jobs (1)" in md and "e2e/b/linear/shots1_seed3" in md
    assert "### prompt tuning" in md and "### linear probing" in md
    rows = (sweep_dir / "report" / "report.csv").read_text().splitlines()
    assert rows[0].startswith("model,task,dataset,mode,shots,n_seeds,seeds,mean,std")
    pngs = list((sweep_dir / "report" / "plots").glob("*.png"))
    assert pngs and all(p.read_bytes()[:8] == PNG_MAGIC for p in pngs)


@pytest.mark.slow
def test_end_to_end_multirun_of_the_whole_grid(tmp_path):
    grid = ["task=e2e/a,e2e/b", "shots=1,3", "mode=prompt,linear", "seed=3,30"]
    sweep_dir, results = _e2e_sweep(tmp_path, grid)
    statuses = sorted(r["status"] for r in results.values())
    assert statuses == ["complete"] * 14 + ["failed"] * 2, statuses
    from adapt.report import main as report_main

    assert report_main([str(sweep_dir)]) == 0
    md = (sweep_dir / "report" / "report.md").read_text()
    assert "## Failed jobs (2)" in md and "e2e/b/linear/shots3_seed30" in md


def test_a_job_killed_mid_run_is_reported_where_and_when_it_started(tmp_path):
    """kill -9 of a real training job after its first checkpoint: the folder still says who ran it."""
    cmd = _adapt_run(
        tmp_path,
        "task=demo",
        "mode=prompt",
        "shots=1",
        "seed=3",
        *SMALL_INPUT,
        "trainer.max_epochs=100",
        "trainer.enable_progress_bar=false",
    )
    env = {**os.environ, "WANDB_MODE": "disabled"}
    # shots1_seed3-<hash>: the small inputs and the epochs make this run distinct (adapt/resolvers.py)
    parent = tmp_path / "multirun" / "smoke" / "glip_mini" / "demo" / "prompt"
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 900
        run_dir = parent / "shots1_seed3"
        while time.monotonic() < deadline and proc.poll() is None:
            run_dir = next(parent.glob("shots1_seed3-*"), run_dir)
            record = sweep.read_results(run_dir) or {}
            if record.get("val_history") and (run_dir / "checkpoints" / "last.ckpt").is_file():
                break
            time.sleep(0.5)
        assert proc.poll() is None, "the job ended before its first checkpoint"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    record = sweep.read_results(run_dir)
    assert record["status"] == "running" and record["pid"] == proc.pid  # the job's own process
    assert record["host"] == socket.gethostname() and record["started_at"]
    assert record["val_history"] and record["config"]["task"]["name"] == "demo"

    from adapt.report import build_report, render_markdown

    md = render_markdown(build_report(run_dir.parents[3], paper=None))
    assert "## Died jobs (the process is gone: killed, out of memory or out of time) (1)" in md
    assert f"pid {proc.pid} on {socket.gethostname()} is no longer running" in md
    assert f"started {record['started_at']} on {socket.gethostname()} (pid {proc.pid})" in md
    assert "demo/prompt/shots1_seed3" in md
