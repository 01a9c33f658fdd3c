"""Run folders (adapt/resolvers.py, adapt/runs/rundir.py, the skip rules in adapt/runs/sweep.py):
one folder per distinct run, a complete result never destroyed, one process per folder, output a
person can read.

The behaviour tests are real `python -m adapt.run` processes on the two small COCO datasets of
tests/test_sweep.py (glip_mini, 32-pixel inputs, trainer=debug, no workers, no logger).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adapt import resolvers
from adapt.runs import rundir, sweep
from tests.test_sweep import SMALL_INPUT, _e2e_project

EXCLUDE = ["task", "seed", "logger", "logger.*", "hydra.*"]


def test_the_suffix_hashes_only_the_overrides_that_make_a_run_distinct():
    assert resolvers.run_suffix(["task=a", "seed=3", "logger=none", "logger.project=x"], EXCLUDE) == ""
    one = resolvers.run_suffix(["task.data_root=/a", "task=x"], EXCLUDE)
    assert one.startswith("-") and len(one) == 9
    assert one != resolvers.run_suffix(["task.data_root=/b"], EXCLUDE)
    # order does not matter; a + prefix is the same key for the exclusion
    assert resolvers.run_suffix(["b=1", "a=2"], EXCLUDE) == resolvers.run_suffix(["a=2", "b=1"], EXCLUDE)
    assert resolvers.run_suffix(["+logger.tags=[a]"], EXCLUDE) == ""


def _env() -> dict[str, str]:
    return {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}


def _run_cmd(root: Path, *overrides: str) -> list[str]:
    flags = [o for o in overrides if o.startswith("-")]  # argparse wants -m before the overrides
    return [
        sys.executable,
        "-m",
        "adapt.run",
        *flags,
        "model=glip_mini",
        "logger=none",
        "data.num_workers=0",
        "trainer=debug",
        "mode=prompt",
        "shots=1",
        "seed=3",
        f"hydra.searchpath=[file://{root / 'conf'}]",
        *SMALL_INPUT,
        *(o for o in overrides if not o.startswith("-")),
    ]


def _adapt(root: Path, *overrides: str, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    cmd = _run_cmd(root, *overrides)
    return subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=timeout, env=_env())


def _folders(root: Path) -> list[Path]:
    return sorted(p.parent for p in (root / "outputs").rglob("results.json") if "previous" not in p.parts)


@pytest.mark.slow  # real adapt.run processes (tens of seconds); run with -m slow
def test_a_multirun_over_two_data_roots_leaves_two_complete_results(tmp_path):
    _e2e_project(tmp_path)
    roots = f"{tmp_path / 'data' / 'a'},{tmp_path / 'data' / 'b'}"
    sweep_dir = f"hydra.sweep.dir={tmp_path / 'mr'}"
    proc = _adapt(tmp_path, "-m", "task=e2e/a", f"task.data_root={roots}", sweep_dir)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = sorted((tmp_path / "mr").rglob("results.json"))
    assert len(results) == 2, results
    records = [json.loads(p.read_text()) for p in results]
    assert [r["status"] for r in records] == ["complete", "complete"]
    assert {r["config"]["task"]["data_root"] for r in records} == {
        str(tmp_path / "data" / "a"),
        str(tmp_path / "data" / "b"),
    }
    # readable name plus the hash of the other overrides
    names = {p.parent.name for p in results}
    assert all(n.startswith("shots1_seed3-") for n in names) and len(names) == 2
    # output a person can read: the untrained default named once, no third-party tips, paths whole
    out = proc.stdout + proc.stderr
    assert out.count("model=glip_mini is an untrained miniature GLIP") == 1
    assert "💡 Tip" not in out and "GPU available" not in out and "litlogger" not in out
    for p in results:
        assert f"results: {p}\n" in proc.stdout
        log = (p.parent / "run.log").read_text()
        assert "run summary" in log and "test AP" in log and f"results: {p}" in log


@pytest.mark.slow  # real adapt.run processes (tens of seconds); run with -m slow
def test_a_complete_run_is_skipped_and_a_failing_overwrite_keeps_it(tmp_path):
    """Same command, same folder; a complete run is skipped, overwrite=true keeps the old result,
    and a failing overwrite never leaves the complete result destroyed."""
    _e2e_project(tmp_path)
    first = _adapt(tmp_path, "task=e2e/a", "hydra.run.dir=outputs/plain")
    assert first.returncode == 0, first.stderr[-4000:]
    folder = tmp_path / "outputs" / "plain"
    complete = json.loads((folder / "results.json").read_text())
    assert complete["status"] == "complete" and (folder / "export").is_dir()
    mtime = (folder / "results.json").stat().st_mtime_ns

    again = _adapt(tmp_path, "task=e2e/a", "hydra.run.dir=outputs/plain")
    assert again.returncode == 0, again.stderr[-4000:]
    assert f"already complete: the result is in {folder / 'results.json'}" in again.stdout + again.stderr
    assert (folder / "results.json").stat().st_mtime_ns == mtime

    # overwrite=true, but the data is now broken: the re-run fails, the complete result survives
    (tmp_path / "data" / "a" / "test.json").write_text("{not json")
    broken = _adapt(tmp_path, "task=e2e/a", "hydra.run.dir=outputs/plain", "overwrite=true")
    assert broken.returncode == 2 and "test.json" in broken.stderr
    (kept,) = (folder / "previous").glob("*/results.json")
    assert json.loads(kept.read_text()) == complete and (kept.parent / "export").is_dir()
    assert json.loads((folder / "results.json").read_text())["status"] == "failed"
    log = (folder / "run.log").read_text()
    assert "adapt: error:" in log and "test.json" in log and "previous result" in log


def test_the_default_folder_name_is_readable_without_extra_overrides(tmp_path):
    """hydra.run.dir as configured: only excluded overrides -> no hash (one folder per grid point)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    import adapt

    def folder(*overrides: str) -> str:
        GlobalHydra.instance().clear()
        conf = Path(adapt.__file__).parent / "conf"
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        try:
            return str(OmegaConf.select(cfg, "hydra.run.dir"))
        finally:
            HydraConfig.instance().cfg = None  # later tests must not see a running Hydra job

    plain = folder("mode=prompt", "shots=1", "seed=30", "logger=none", "resume=true", "data.num_workers=0")
    assert plain == "outputs/demo/glip_mini_pretrained/prompt/shots1_seed30"
    lr = folder("mode=prompt", "shots=1", "seed=30", "mode.optimizer.lr=0.1")
    assert lr.startswith("outputs/demo/glip_mini_pretrained/prompt/shots1_seed30-") and lr != plain
    assert folder("mode=prompt", "mode.optimizer.lr=0.1", "seed=30", "shots=1") == lr


@pytest.mark.slow  # real adapt.run processes (tens of seconds); run with -m slow
def test_a_second_process_on_the_same_folder_stops_naming_the_first(tmp_path):
    _e2e_project(tmp_path)
    long_run = ["task=e2e/a", "hydra.run.dir=outputs/busy", "trainer.max_steps=-1", "trainer.max_epochs=200"]
    folder = tmp_path / "outputs" / "busy"
    first = subprocess.Popen(
        _run_cmd(tmp_path, *long_run),
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and first.poll() is None:
            if (folder / "checkpoints" / "last.ckpt").is_file():
                break
            time.sleep(0.5)
        assert first.poll() is None, "the first run ended before its first checkpoint"
        second = _adapt(tmp_path, *long_run)
        assert first.poll() is None
        assert second.returncode == 2
        assert (
            f"adapt: error: {folder} is in use by another run (host {socket.gethostname()}, pid {first.pid}, "
        ) in second.stderr
        assert (folder / "checkpoints" / "last.ckpt").is_file()  # the first run's files untouched
        assert json.loads((folder / rundir.LOCK_FILE).read_text())["pid"] == first.pid
    finally:
        first.terminate()
        first.wait(timeout=120)
    assert not (folder / rundir.LOCK_FILE).exists()  # released on the way out (SIGTERM)
    assert sweep.read_results(folder)["status"] == "interrupted"


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = tmp_path / rundir.LOCK_FILE
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "started_at": "then"}))
    with caplog.at_level("WARNING"), rundir.run_lock(tmp_path) as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert f"taking over the stale lock {lock} (pid {dead.pid}" in caplog.text
    assert not lock.exists()


def test_a_lock_held_on_another_host_says_which_file_to_delete(tmp_path):
    lock = tmp_path / rundir.LOCK_FILE
    lock.write_text(json.dumps({"host": "gpu-node-7", "pid": 4242, "started_at": "then"}))
    message = r"on host gpu-node-7 \(pid 4242, .*delete .*run\.lock and run again"
    with pytest.raises(rundir.RunLockedError, match=message), rundir.run_lock(tmp_path):
        pass
    assert lock.exists()
