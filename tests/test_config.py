"""The Hydra config tree composes, option by option, exactly as users run it."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

import adapt

CONF = Path(adapt.__file__).parent / "conf"
# Groups selected in config.yaml's defaults list; `sweep` is added with `+sweep=...`.
GROUPS = ["task", "model", "mode", "recipe", "data", "trainer", "logger", "callbacks"]


def options(group: str) -> list[str]:
    """Every option of a group, nested folders included (task/odinw/aquarium -> odinw/aquarium)."""
    root = CONF / group
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def compose_with(*overrides: str):
    """Compose as `python -m adapt.run` does: the overrides exactly as typed on its command line."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


def test_conf_ships_inside_the_package():
    assert (CONF / "config.yaml").is_file()
    for group in [*GROUPS, "sweep"]:
        assert options(group), f"config group {group}/ is empty"


def test_default_is_the_embedded_demo():
    cfg = compose_with()
    choices = cfg.hydra.runtime.choices
    assert choices.task == "demo"
    assert choices.model == "glip_mini_pretrained"
    assert choices.mode == "prompt"
    # its budget (composed after config.yaml's own values) tests the loaded weights first
    assert cfg.test_before_training is True and cfg.trainer.max_epochs == 10
    assert compose_with("model=glip_mini").test_before_training is False


@pytest.mark.parametrize(
    ("group", "option"), [(g, o) for g in GROUPS for o in options(g)], ids=lambda x: str(x)
)
def test_every_option_composes(group: str, option: str):
    cfg = compose_with(f"{group}={option}")
    assert cfg.hydra.runtime.choices[group] == option
    # Resolving catches broken interpolations; hydra's own node needs a running job, skip it.
    job = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    assert isinstance(job, dict)
    assert group in job


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
    assert cfg.shots == 5
    assert cfg.mode.name == "prompt"
    assert cfg.hydra.runtime.choices.task == "odinw/aquarium"


@pytest.mark.parametrize(
    ("shots", "epochs", "copies", "step_patience", "stop_patience"),
    [
        (0, 0, 1, 3, 8),
        (1, 200, 8, 3, 8),
        (3, 200, 4, 3, 8),
        (5, 200, 2, 3, 8),
        (10, 200, 1, 3, 8),
        ("all", 200, 1, 2, 4),
    ],
)
def test_shots_is_a_plain_value_and_picks_its_recipe_row(shots, epochs, copies, step_patience, stop_patience):
    """`shots=5` as typed (no quoting): the official "K_200_C" schedule of that K, as in glip_spec 4.5."""
    cfg = compose_with("task=odinw/aquarium", f"shots={shots}")  # the demo's budget caps its periods
    assert cfg.shots == shots
    recipe = cfg.recipe
    assert (recipe.epochs, recipe.copies, recipe.step_patience, recipe.stop_patience) == (
        epochs,
        copies,
        step_patience,
        stop_patience,
    )
    # the recipe reaches the objects built from it: LR-drop patience, data copies, Trainer periods
    assert cfg.recipe.lr_drop.patience == step_patience
    assert cfg.data.copies == copies and cfg.data.shots == shots
    assert cfg.trainer.max_epochs == epochs


def test_a_recipe_key_or_a_new_row_is_an_override():
    cfg = compose_with("shots=5", "recipe.copies=7")
    assert cfg.recipe.copies == 7 and cfg.data.copies == 7 and cfg.recipe.epochs == 200
    cfg = compose_with(
        "task=coco", "shots=2", "+recipe.by_shots.2={epochs:50,copies:8,step_patience:3,stop_patience:8}"
    )
    assert (cfg.recipe.epochs, cfg.trainer.max_epochs, cfg.data.copies) == (50, 50, 8)


def test_run_dir_is_deterministic_per_job():
    """No timestamp in a single run's folder: re-running the same command finds it to resume."""
    cfg = compose_with("task=odinw/aquarium", "shots=5", "mode=prompt", "seed=30")
    HydraConfig.instance().set_config(cfg)
    try:
        assert cfg.hydra.run.dir == "outputs/odinw/aquarium/glip_mini_pretrained/prompt/shots5_seed30"
        assert compose_with("shots=all").hydra.run.dir.endswith("/shotsall_seed3")
    finally:
        HydraConfig.instance().cfg = None  # global state: later tests must not see this job


def test_one_normalize_shots_in_the_package():
    """The data layer, the sweep rules, results.json and the report agree because they share one."""
    package = Path(adapt.__file__).parent
    defining = [
        str(p.relative_to(package)) for p in package.rglob("*.py") if "def normalize_shots(" in p.read_text()
    ]
    assert defining == ["grid.py"]


# ------------------------------------------------------------------------------------------------
# Objects are built from `_target_` nodes: swapping one is an override, not a code change


def test_trainer_logger_callbacks_data_and_optimiser_are_target_nodes():
    cfg = compose_with("logger=csv")
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"
    assert cfg.logger._target_ == "adapt.train.loggers.CSVLogger"
    assert cfg.callbacks.progress_bar._target_ == "lightning.pytorch.callbacks.RichProgressBar"
    assert cfg.data._target_ == "adapt.train.datamodule.TaskDataModule" and cfg.data._partial_
    assert cfg.mode.optimizer._target_ == "adapt.train.optim.adamw" and cfg.mode.optimizer._partial_
    assert cfg.recipe.lr_drop._target_ == "torch.optim.lr_scheduler.ReduceLROnPlateau"
    # the trainer group holds Trainer arguments only (batch size, workers, schedule live elsewhere)
    import inspect

    import lightning

    accepted = set(inspect.signature(lightning.pytorch.Trainer).parameters)
    for option in options("trainer"):
        node = compose_with(f"trainer={option}").trainer
        assert set(node) - {"_target_", "_convert_"} <= accepted, option


def test_the_modes_optimiser_is_adamw_over_the_official_groups():
    from hydra.utils import instantiate

    from adapt.model import GLIPConfig, build_glip
    from adapt.modes import build_policy

    cfg = compose_with("mode=full")
    model = build_glip(GLIPConfig.from_dict(OmegaConf.to_container(cfg.model.arch, resolve=True)))
    build_policy(cfg.mode).apply(model)
    optimizer = instantiate(cfg.mode.optimizer)(model)
    assert type(optimizer).__name__ == "AdamW"
    lrs = {n: g["lr"] for g in optimizer.param_groups for n in g["names"]}
    assert lrs["head.bias0"] == 2e-4 and lrs["head.log_scale"] == 1e-4
    assert lrs["language_backbone.encoder.layer.0.attention.self.query.weight"] == 1e-5
    plateau = instantiate(cfg.recipe.lr_drop)(optimizer)
    assert (plateau.mode, plateau.factor, plateau.patience) == ("max", 0.1, 3)


def test_any_lightning_logger_from_the_command_line(tmp_path):
    """`logger=none +logger._target_=...`: a logger without a config file, given the run folder."""
    from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger

    from adapt.train.loggers import build_logger

    assert build_logger(compose_with("logger=none"), tmp_path) is None
    cfg = compose_with(
        "logger=none", "+logger._target_=lightning.pytorch.loggers.CSVLogger", "+logger.name=mine"
    )
    logger = build_logger(cfg, tmp_path)
    assert type(logger) is LightningCSVLogger and logger.log_dir.startswith(str(tmp_path / "mine"))
