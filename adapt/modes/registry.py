"""The closed registry of adaptation modes: a policy is found by its *name*, never by an import path.

An export, a results.json or a sweep folder is data that someone else may have written, so the mode
it records is a name looked up here, the way peft resolves a received adapter's ``peft_type``
through a fixed mapping. The names are adapt's built-in policies, those registered in code with
:func:`register_mode`, and those that an installed distribution declares under the entry-point
group ``adapt.modes`` (``[project.entry-points."adapt.modes"] my_mode = "my_pkg.modes:MyMode"``):
installing a package is the user's decision, reading a file is not. An unknown name is one sentence
listing the known ones, and nothing is imported on its behalf.

A ``_target_`` that the user writes in a mode YAML or on the command line is configuration, and
Hydra instantiates it (:func:`adapt.modes.build_policy`); only names read from files come here.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from adapt.modes.base import ModePolicy

ENTRY_POINT_GROUP = "adapt.modes"

# Exports of format 2 recorded the policy as the built-in class's import path; they still load,
# by the name that path always meant (the path itself is never imported).
LEGACY_CLASS_PATHS = {
    "adapt.train.modes.ZeroShot": "zero",
    "adapt.train.modes.PromptTuning": "prompt",
    "adapt.train.modes.LinearProbe": "linear",
    "adapt.train.modes.FullFineTuning": "full",
    "adapt.train.modes.LoRA": "lora",
}

P = TypeVar("P", bound="type[ModePolicy]")

_REGISTRY: dict[str, type[ModePolicy]] = {}


class UnknownModeError(ValueError):
    """A mode name that no registered policy answers to."""


def register_mode(name: str) -> Callable[[P], P]:
    """Class decorator: make ``cls`` the policy of mode ``name`` (and set ``cls.name``).

    Registering the same class twice is harmless; a second class under a taken name is refused, so
    a plugin cannot silently replace a built-in mode.
    """

    def add(cls: P) -> P:
        held = _REGISTRY.get(name)
        if held is not None and held is not cls and held.__qualname__ != cls.__qualname__:
            raise ValueError(f"mode {name!r} is already registered to {held.__module__}.{held.__qualname__}")
        _REGISTRY[name] = cls
        cls.name = name
        return cls

    return add


def _from_entry_point(name: str) -> type[ModePolicy] | None:
    """The policy an installed distribution declares for ``name`` in the ``adapt.modes`` group."""
    from adapt.modes.base import ModePolicy

    for point in entry_points(group=ENTRY_POINT_GROUP, name=name):
        cls = point.load()
        if not (isinstance(cls, type) and issubclass(cls, ModePolicy)):
            raise UnknownModeError(
                f"entry point {ENTRY_POINT_GROUP}:{name} ({point.value}) is not a ModePolicy subclass"
            )
        return register_mode(name)(cls)
    return None


def registered_modes() -> list[str]:
    """The names a received file may record: built-ins, code registrations and installed entry points."""
    names = set(_REGISTRY) | {point.name for point in entry_points(group=ENTRY_POINT_GROUP)}
    return sorted(names)


def policy_class(name: str) -> type[ModePolicy]:
    """The policy class registered as ``name``; :class:`UnknownModeError` lists the known names."""
    key = LEGACY_CLASS_PATHS.get(name, name)
    cls = _REGISTRY.get(key) or _from_entry_point(key)
    if cls is None:
        raise UnknownModeError(
            f"mode policy {name!r} is not registered (known: {', '.join(registered_modes())}); adapt "
            "never imports a name read from a file: register the mode in code "
            "(adapt.modes.register_mode) or install the package that declares it under the "
            f"'{ENTRY_POINT_GROUP}' entry point"
        )
    return cls
