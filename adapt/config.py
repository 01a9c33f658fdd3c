"""The one configuration loader: ``conf/`` composed as ``adapt.run`` composes it, for code that is
not a Hydra app (the benchmarks, ``adapt.download``, notebooks, tests).

Reading a YAML file of ``conf/`` by itself skips its ``defaults:`` list and its interpolations
(``mode=linear_cached`` is ``linear`` plus one setting), so every reader composes the whole job
config through Hydra and takes the node it needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

CONF_DIR = Path(__file__).resolve().parent / "conf"


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The composed job config for ``overrides`` (``["mode=lora", "task=odinw/aquarium"]``).

    ``${hydra:...}`` values (the run folder) are not resolvable outside a running job; every other
    value is. Inside a running Hydra app the app's own search path is used.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import adapt  # noqa: F401  # registers adapt's resolvers

    if GlobalHydra.instance().is_initialized():
        return compose(config_name="config", overrides=list(overrides))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def group_options(group: str) -> list[str]:
    """The options ``conf/<group>/`` ships (``mode`` -> ``full``, ``linear``, ...), nested ones as ``a/b``."""
    folder = CONF_DIR / group
    return sorted(p.relative_to(folder).with_suffix("").as_posix() for p in folder.rglob("*.yaml"))
