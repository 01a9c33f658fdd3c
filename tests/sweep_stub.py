"""Real sweeps with a stub job: adapt's sweeper, Hydra's launcher and results.json writer, no model.

`run_sweep` starts `python app.py -m ...` in a project whose config groups are one-line files and
whose job records a result chosen by the test (`plan`) through the same functions the training
job uses (`adapt.runs.sweep.run_job`, `adapt.runs.record.update_record`). Tests of the report, the cost
estimate and the sweep build their sweep folders this way, so they read what a sweep really writes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import adapt

CONF = Path(adapt.__file__).parent / "conf"

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

STUB_APP = """
import json, os, signal
from pathlib import Path

import hydra
from adapt.runs import sweep
from adapt.runs.record import composed_config, update_record

PLAN = json.loads(Path(os.environ["STUB_PLAN"]).read_text())
COUNTER = Path(os.environ["STUB_COUNTER"])


def train(cfg):
    point = sweep.grid_point(cfg)
    key = f"{point.task} {point.mode} {point.shots} {point.seed}"
    with COUNTER.open("a") as f:
        f.write(key + "\\n")
    what = PLAN.get(key, {})
    if "fail" in what:
        raise RuntimeError(what["fail"])
    if what.get("kill"):
        os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer or a SLURM time limit would
    ap = what.get("ap", 40.0 + point.seed / 30)
    history = [{"step": 10 * (i + 1), "epoch": i, "ap": ap} for i in range(what.get("evaluations", 2))]
    update_record(
        sweep.hydra_output_dir(),
        {
            "status": "complete", "task": point.task, "model": point.model, "mode": point.mode,
            "shots": point.shots, "seed": point.seed, "test": {"ap": ap}, "val_history": history,
            "wall_time_s": what.get("wall_time_s", 1.0), "config": composed_config(cfg),
        },
    )
    return ap


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg):
    return sweep.run_job(cfg, train)


if __name__ == "__main__":
    main()
"""


def _folder_exclude_keys() -> list[str]:
    """adapt's own list of the overrides that leave a run's folder name alone (adapt/resolvers.py)."""
    import yaml

    cfg = yaml.safe_load((CONF / "config.yaml").read_text())
    return cfg["hydra"]["job"]["config"]["override_dirname"]["exclude_keys"]


def stub_project(
    root: Path,
    tasks: Mapping[str, str] | None = None,
    models: Mapping[str, str | None] | None = None,
    modes: Iterable[str] = ("zero", "prompt", "linear", "full"),
) -> Path:
    """A Hydra project: task options {choice: dataset name}, model options {choice: paper row}."""
    tasks = tasks or {"a": "a", "b": "b"}
    models = models or {"glip_mini": None}
    conf = root / "conf"
    files = {f"task/{t}.yaml": f"id: {t}\nname: {name}\n" for t, name in tasks.items()}
    files |= {f"model/{m}.yaml": f"name: {m}\npaper: {json.dumps(p)}\n" for m, p in models.items()}
    files |= {f"mode/{m}.yaml": f"name: {m}\n" for m in modes}
    for name, body in files.items():
        (conf / name).parent.mkdir(parents=True, exist_ok=True)
        (conf / name).write_text(body)
    (conf / "config.yaml").write_text(
        textwrap.dedent(
            f"""
            defaults:
              - task: {next(iter(tasks))}
              - mode: prompt
              - model: {next(iter(models))}
              - _self_
            shots: 1
            seed: 3
            hydra:
              searchpath: [file://{CONF}]
              job:
                config:
                  override_dirname:
                    exclude_keys: {json.dumps(_folder_exclude_keys())}
            """
        )
    )
    (root / "app.py").write_text(STUB_APP)
    return root / "app.py"


def run_sweep(
    root: Path, *overrides: str, plan: Mapping[str, Mapping[str, Any]] | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    """`python app.py -m <overrides>` in `root`; `plan` maps "task mode shots seed" to {ap, fail, kill}."""
    (root / "plan.json").write_text(json.dumps(dict(plan or {})))
    env = {
        **os.environ,
        "STUB_PLAN": str(root / "plan.json"),
        "STUB_COUNTER": str(root / "trained.txt"),
        "HYDRA_FULL_ERROR": "1",
    }
    result = subprocess.run(
        [sys.executable, str(root / "app.py"), "-m", *overrides],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def trained(root: Path) -> list[str]:
    """The jobs the stub ran, in order ("task mode shots seed")."""
    path = root / "trained.txt"
    return path.read_text().splitlines() if path.exists() else []
