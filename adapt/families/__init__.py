"""Detector families beyond GLIP: thin adapters over transformers' own detectors.

Grounding DINO, MM Grounding DINO (also LLMDet checkpoints) and OWLv2 behind one seam
(:class:`DetectorFamily`, ``base.py``), under adapt's modes (``modes.py``), with their exports
(``exports.py``). Built from a ``conf/model`` config naming a ``family:`` (:func:`build_family`) or
from any ``save_pretrained`` folder (:func:`family_from_folder`).
"""

from adapt.families.base import DetectorFamily, ImageBatch, RawOutputs
from adapt.families.grounding_dino import GroundingDino, MMGroundingDino
from adapt.families.loading import FamilyLoadError, build_family, family_from_folder, weights_digest
from adapt.families.owlv2 import OWLv2
from adapt.families.registry import FAMILIES, family_class, family_for_model_type
from adapt.families.spec import FamilyConfigError, FamilySpec, InferenceSettings, family_model_config

__all__ = [
    "FAMILIES",
    "DetectorFamily",
    "FamilyConfigError",
    "FamilyLoadError",
    "FamilySpec",
    "GroundingDino",
    "ImageBatch",
    "InferenceSettings",
    "MMGroundingDino",
    "OWLv2",
    "RawOutputs",
    "build_family",
    "family_class",
    "family_for_model_type",
    "family_from_folder",
    "family_model_config",
    "weights_digest",
]
