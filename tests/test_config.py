"""The Hydra config tree composes, option by option, exactly as users run it."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

import adapt
from adapt.run import quote_numeric_choices

CONF = Path(adapt.__file__).parent / "conf"
# Groups selected in config.yaml's defaults list; `sweep` is added with `+sweep=...`.
GROUPS = ["task", "model", "mode", "shots", "trainer", "logger"]


def options(group: str) -> list[str]:
    """Every option of a group, nested folders included (task/odinw/aquarium -> odinw/aquarium)."""
    root = CONF / group
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def compose_with(*overrides: str):
    """Compose as `python -m adapt.run` does, command-line quoting of numeric choices included."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            config_name="config", overrides=quote_numeric_choices(list(overrides)), return_hydra_config=True
        )


def test_conf_ships_inside_the_package():
    assert (CONF / "config.yaml").is_file()
    for group in [*GROUPS, "sweep"]:
        assert options(group), f"config group {group}/ is empty"


def test_default_is_the_embedded_demo():
    cfg = compose_with()
    choices = cfg.hydra.runtime.choices
    assert choices.task == "demo"
    assert choices.model == "glip_mini"
    assert choices.mode == "prompt"


@pytest.mark.parametrize(
    ("group", "option"), [(g, o) for g in GROUPS for o in options(g)], ids=lambda x: str(x)
)
def test_every_option_composes(group: str, option: str):
    cfg = compose_with(f"{group}={option}")
    assert cfg.hydra.runtime.choices[group] == option
    # Resolving catches broken interpolations; hydra's own node needs a running job, skip it.
    job = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    assert isinstance(job, dict)
    assert job[group] is not None


@pytest.mark.parametrize("option", options("sweep") if (CONF / "sweep").is_dir() else [])
def test_every_sweep_composes(option: str):
    cfg = compose_with(f"+sweep={option}")
    assert cfg.sweep.name == option
    assert cfg.hydra.sweeper._target_ == "hydra_plugins.adapt_sweeper.protocol_sweeper.ProtocolSweeper"
    assert cfg.resume == "auto"  # a re-run sweep continues its interrupted jobs
    job = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    assert job["sweep"]["canonical_seed"] == 3 and job["sweep"]["dry_run"] is False


def test_main_usage_composes():
    cfg = compose_with("task=odinw/aquarium", "shots=5", "mode=prompt", "model=glip_t")
    assert cfg.shots.k == 5
    assert cfg.mode.name == "prompt"
    assert cfg.hydra.runtime.choices.task == "odinw/aquarium"


def test_run_dir_is_deterministic_per_job():
    """No timestamp in a single run's folder: re-running the same command finds it to resume."""
    cfg = compose_with("task=odinw/aquarium", "shots=5", "mode=prompt", "seed=30")
    HydraConfig.instance().set_config(cfg)
    try:
        assert cfg.hydra.run.dir == "outputs/odinw/aquarium/glip_mini/prompt/shots5_seed30"
    finally:
        HydraConfig.instance().cfg = None  # global state: later tests must not see this job


@pytest.mark.parametrize(
    ("arg", "quoted"),
    [
        ("shots=5", "shots='5'"),
        ("shots=1,3,all", "shots='1','3',all"),
        ("shots=all", "shots=all"),
        ("shots='5'", "shots='5'"),
        ("seed=5", "seed=5"),
        ("task=odinw/aquarium", "task=odinw/aquarium"),
        ("shots=range(1,3)", "shots=range(1,3)"),
    ],
)
def test_numeric_group_choices_are_quoted_for_hydra(arg: str, quoted: str):
    """Hydra refuses `shots=5` (an int) as a group choice; the entry point quotes it."""
    assert quote_numeric_choices([arg]) == [quoted]
