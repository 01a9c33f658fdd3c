"""The closed mapping from a family's name (a model config's ``family:``) to its adapter class.

Like transformers' Auto classes and peft's ``PEFT_TYPE_TO_CONFIG_MAPPING``, a name found in a file
(a model config, an export, a folder's ``config.json`` ``model_type``) selects a class from this
table and is never imported as a path. New families register here.
"""

from __future__ import annotations

from adapt.families.base import DetectorFamily
from adapt.families.grounding_dino import GroundingDino, MMGroundingDino
from adapt.families.owlv2 import OWLv2

FAMILIES: dict[str, type[DetectorFamily]] = {cls.name: cls for cls in (GroundingDino, MMGroundingDino, OWLv2)}


def family_class(name: str) -> type[DetectorFamily]:
    """The adapter class of a family name; one sentence naming the known ones otherwise."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown detector family {name!r}; known: {sorted(FAMILIES)}") from None


def family_for_model_type(model_type: str) -> type[DetectorFamily]:
    """The family that runs a transformers ``model_type`` (a ``save_pretrained`` folder's config.json)."""
    for cls in FAMILIES.values():
        if model_type in cls.model_types:
            return cls
    known = sorted(t for cls in FAMILIES.values() for t in cls.model_types)
    raise ValueError(f"no adapt family runs model_type {model_type!r}; known: {known}")
