"""Adaptation modes: the policies, their closed name registry, and building one from a mode config.

``build_policy(cfg.mode)`` instantiates the mode YAML's ``policy`` node (configuration the user
wrote: a ``_target_`` plus its settings, LoRA's ``peft.LoraConfig`` included); a config that names
only the mode (``{"name": "prompt"}``) takes the registered policy of that name with its defaults.
Exports, results and sweep folders name modes; :func:`policy_class` resolves those names through
the registry and imports nothing (:mod:`adapt.modes.registry`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from adapt.modes.base import (
    FROZEN_TRUNK,
    InferenceText,
    ModePolicy,
    export_run,
    load_named_tensors,
    module_training_flags,
)
from adapt.modes.context_prompt import ContextPromptTuning
from adapt.modes.full import FullFineTuning
from adapt.modes.fusion_prompt import FusionPromptTuning
from adapt.modes.linear import LINEAR_PROBE_KEYS, LinearProbe
from adapt.modes.lora import LoRA, inject_lora, lora_target_names
from adapt.modes.prompt import PromptTuning
from adapt.modes.registry import (
    ENTRY_POINT_GROUP,
    UnknownModeError,
    policy_class,
    register_mode,
    registered_modes,
)
from adapt.modes.zero import ZeroShot
from adapt.modes.zero_ensemble import PromptEnsemble

__all__ = [
    "ENTRY_POINT_GROUP",
    "FROZEN_TRUNK",
    "LINEAR_PROBE_KEYS",
    "ContextPromptTuning",
    "FullFineTuning",
    "FusionPromptTuning",
    "InferenceText",
    "LinearProbe",
    "LoRA",
    "ModePolicy",
    "PromptEnsemble",
    "PromptTuning",
    "UnknownModeError",
    "ZeroShot",
    "build_policy",
    "export_run",
    "inject_lora",
    "load_named_tensors",
    "lora_target_names",
    "mode_label",
    "module_training_flags",
    "policy_class",
    "policy_for_export",
    "register_mode",
    "registered_modes",
]


def build_policy(mode_cfg: Mapping[str, Any]) -> ModePolicy:
    """The policy a mode config describes: ``instantiate(mode.policy)``, else the registered name's."""
    node = mode_cfg.get("policy")
    where = f"mode {mode_cfg.get('name')!r}"
    if node is None:
        return policy_class(str(mode_cfg["name"]))()
    if not isinstance(node, Mapping) or not node.get("_target_"):
        raise ValueError(f"{where}: mode.policy must be a node with a _target_ naming a ModePolicy class")
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    target = node.get("_target_")
    try:
        policy = instantiate(node)
    except InstantiationException as exc:
        raise ValueError(f"{where}: mode.policy._target_={target!r} cannot be built ({exc})") from exc
    if not isinstance(policy, ModePolicy):
        raise ValueError(f"{where}: mode.policy._target_={target!r} is not a ModePolicy subclass")
    if not policy.name:
        raise ValueError(
            f"{where}: {type(policy).__qualname__} has no registered name; decorate it with "
            "@adapt.modes.register_mode('<name>') so its exports can name it"
        )
    return policy


def policy_for_export(name: str) -> ModePolicy:
    """The policy that applies an export recording mode policy ``name`` (default settings)."""
    return policy_class(name)()


def mode_label(name: str) -> str:
    """A mode's report label by its registered name (the name itself when none is registered)."""
    try:
        return policy_class(name).label or name
    except UnknownModeError:
        return name
