"""Checks of the composed job config, before anything is built.

Hydra composes whatever the command line says (``seed=abc`` is a string, ``shots=-1`` an int), and
a value the job cannot use would otherwise surface as a traceback from deep inside torch or
Lightning, possibly after the data and model are loaded. Each check here names the key and the
value in one sentence; ``adapt.run`` prints it without a traceback and exits with status 2.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from adapt.grid import normalize_shots
from adapt.modes import build_policy
from adapt.runs.resume import parse_resume

RECIPE_KEYS = ("epochs", "copies", "step_patience", "stop_patience")


class ConfigError(ValueError):
    """A config value the job cannot run with; the message names the key and the value."""


def check_config(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` for the first value the job cannot run with."""
    try:
        shots = normalize_shots(cfg.get("shots"))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    mode = str(OmegaConf.select(cfg, "mode.name", default=""))
    try:
        trains = build_policy(cfg.mode).trains if cfg.get("mode") is not None else False
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    declared = OmegaConf.select(cfg, "mode.evaluates_only", default=None)
    if declared is not None and bool(declared) == trains:
        raise ConfigError(
            f"mode.evaluates_only={declared} contradicts mode {mode}'s policy, which "
            f"{'trains' if trains else 'trains nothing'}: fix conf/mode/{mode}.yaml"
        )
    if trains and shots == 0:
        raise ConfigError(
            f"shots=0 is zero-shot evaluation, which trains nothing: use mode=zero, or shots=1, 3, 5, 10 "
            f"or all with mode={mode}"
        )
    if trains:
        _check_recipe(cfg, shots)
    _check_int("seed", cfg.get("seed"), "an integer (the paper's seeds are 3, 30 and 300)")
    try:
        parse_resume(cfg.get("resume"))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    max_steps = OmegaConf.select(cfg, "trainer.max_steps", default=-1)
    if not _is_int(max_steps) or (int(max_steps) < 1 and int(max_steps) != -1):
        raise ConfigError(
            f"trainer.max_steps={max_steps} is not a number of optimiser steps: use a positive integer, "
            "or -1 for no cap"
        )
    if trains:
        _check_int("trainer.max_epochs", OmegaConf.select(cfg, "trainer.max_epochs"), "a positive integer", 1)
    for key in ("batch_size", "eval_batch_size"):
        _check_int(f"data.{key}", OmegaConf.select(cfg, f"data.{key}"), "a positive integer", 1)
    _check_int("data.num_workers", OmegaConf.select(cfg, "data.num_workers", default=0), "0 or more", 0)


def _check_recipe(cfg: DictConfig, shots: int | str) -> None:
    """The run's row of the recipe table exists (or its keys were set directly)."""
    missing = [k for k in RECIPE_KEYS if OmegaConf.select(cfg, f"recipe.{k}", default=None) is None]
    if missing:
        rows = ", ".join(str(k) for k in (OmegaConf.select(cfg, "recipe.by_shots") or {}))
        raise ConfigError(
            f"shots={shots} has no row in recipe.by_shots (rows: {rows}): add one with "
            f"+recipe.by_shots.{shots}={{epochs:200,copies:1,step_patience:3,stop_patience:8}}"
        )
    for key in RECIPE_KEYS:
        _check_int(f"recipe.{key}", OmegaConf.select(cfg, f"recipe.{key}"), "an integer of 0 or more", 0)


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, str) and value.strip().lstrip("+-").isdigit()


def _check_int(key: str, value: Any, expected: str, minimum: int | None = None) -> None:
    if not _is_int(value) or (minimum is not None and int(value) < minimum):
        raise ConfigError(f"{key}={value} is not {expected}")
