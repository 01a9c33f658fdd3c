"""Checks of the composed job config, before anything is built.

Hydra composes whatever the command line says (``seed=abc`` is a string, ``shots=-1`` an int), and
a value the job cannot use would otherwise surface as a traceback from deep inside torch or
Lightning, possibly after the data and model are loaded. Each check here names the key and the
value in one sentence; ``adapt.run`` prints it without a traceback and exits with status 2.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from adapt.data.grounding_task import is_grounding_config
from adapt.grid import normalize_shots
from adapt.modes import build_policy
from adapt.runs.resume import parse_resume

RECIPE_KEYS = ("epochs", "copies", "step_patience", "stop_patience")
MAX_SEED = 2**32 - 1


class ConfigError(ValueError):
    """A config value the job cannot run with; the message names the key and the value."""


def check_config(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` for the first value the job cannot run with."""
    try:
        shots = normalize_shots(cfg.get("shots"))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    trains = _check_mode(cfg, shots)
    if trains:
        _check_recipe(cfg, shots)
    _check_int("seed", cfg.get("seed"), "an integer (the paper's seeds are 3, 30 and 300)")
    if not 0 <= int(cfg.get("seed")) <= MAX_SEED:  # numpy's and Lightning's range
        raise ConfigError(
            f"seed={cfg.get('seed')} is out of range: use an integer from 0 to {MAX_SEED} "
            "(the paper's seeds are 3, 30 and 300)"
        )
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


def _check_mode(cfg: DictConfig, shots: int | str) -> bool:
    """The mode's policy exists, agrees with the YAML's ``evaluates_only``, and fits ``shots``;
    returns whether the mode trains."""
    mode = str(OmegaConf.select(cfg, "mode.name", default=""))
    try:
        policy = build_policy(cfg.mode) if cfg.get("mode") is not None else None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    trains = policy is not None and policy.trains
    task = cfg.get("task")
    if (
        policy is not None
        and not policy.per_sample_captions
        and task is not None
        and is_grounding_config(task)
    ):
        raise ConfigError(
            f"mode={mode} works on the task's one caption, and a grounding task ({task.get('name')}) "
            "brings a caption per sample: use mode=zero, prompt, linear, full or lora"
        )
    declared = OmegaConf.select(cfg, "mode.evaluates_only", default=None)
    if declared is not None and bool(declared) == trains:
        raise ConfigError(
            f"mode.evaluates_only={declared} contradicts mode {mode}'s policy, which "
            f"{'trains' if trains else 'trains nothing'}: fix conf/mode/{mode}.yaml"
        )
    if not trains and shots != 0:
        # The zero-shot result does not depend on shots; another value only gives it a second folder.
        raise ConfigError(
            f"shots={shots} with mode={mode}, which trains nothing, is the shots=0 evaluation again in "
            f"a folder of its own: use shots=0 with mode={mode}"
        )
    if trains and shots == 0:
        raise ConfigError(
            f"shots=0 is zero-shot evaluation, which trains nothing: use mode=zero, or shots=1, 3, 5, 10 "
            f"or all with mode={mode}"
        )
    return trains


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
