"""Datasets, transforms and the task registry (`conf/task/**`): see docs/DESIGN.md, section Data."""

from adapt.data.coco import CocoDetection, load_coco_json
from adapt.data.errors import DataError, DataWarning
from adapt.data.task import Task, build_task, data_path
from adapt.data.transforms import build_transforms, resize_shape, transforms_from_config

__all__ = [
    "CocoDetection",
    "DataError",
    "DataWarning",
    "Task",
    "build_task",
    "build_transforms",
    "data_path",
    "load_coco_json",
    "resize_shape",
    "transforms_from_config",
]
