"""The GLIP detector in plain PyTorch, numerically equivalent to the official code."""

from adapt.model.checkpoint import (
    CheckpointError,
    LoadReport,
    load_checkpoint,
    official_name,
    official_state_dict,
    read_config,
    save_official,
    save_safetensors,
)
from adapt.model.config import GLIPConfig
from adapt.model.glip import GLIP, build_glip
from adapt.model.head import HeadOutputs
from adapt.model.language import TextFeatures
from adapt.model.preprocess import batch_images

__all__ = [
    "GLIP",
    "CheckpointError",
    "GLIPConfig",
    "HeadOutputs",
    "LoadReport",
    "TextFeatures",
    "batch_images",
    "build_glip",
    "load_checkpoint",
    "official_name",
    "official_state_dict",
    "read_config",
    "save_official",
    "save_safetensors",
]
