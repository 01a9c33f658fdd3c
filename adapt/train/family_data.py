"""A task's splits for a detector family: original images, the family's processor, transformers' boxes.

The few-shot protocol's data is the same as GLIP's (``TaskDataModule``: the splits, the copied
training set, the (seed, epoch) order, DDP's dealing of global batches); what differs is what one
sample becomes:

* no resize here: the family's own processor resizes, normalises and pads (in the collate, so
  DataLoader workers run it), exactly as ``adapt.predict`` and transformers' pipeline do on the same
  image. Training flips horizontally with probability ``flip_prob``; GLIP's multi-scale resize does
  not apply (the processor's size is the family's; ``model.processor`` sets it for a random-init
  model);
* targets in transformers' convention: the data reader's inclusive corners (``x2 = x + w - 1``)
  become exclusive ones (``adapt.boxes.exclusive_corners``), in the original image's pixels;
* images are batched by processed size (``adapt.families.base.process_images``), so no image is
  padded for another: a training image's loss terms and an evaluated image's detections do not
  depend on its batch, and data-parallel training is exact whatever the image sizes
  (``adapt.train.family_module``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from torch import Tensor

from adapt.boxes import exclusive_corners
from adapt.data import Task
from adapt.data.transforms import Compose, RandomHorizontalFlip
from adapt.families.base import process_images
from adapt.prompt import EncodedPrompt
from adapt.train.datamodule import Batch, TaskDataModule


class FamilyCollate:
    """Samples -> ``{"batches": [ImageBatch, ...], "targets": [...]}``.

    ``batches`` are the family processor's output in groups of one processed size (each knows its
    images' places in the batch, ``ImageBatch.index``); ``targets`` are the dataset's, in batch order,
    with ``boxes`` in transformers' convention.
    """

    def __init__(self, image_processor: Any) -> None:
        self.image_processor = image_processor

    def __call__(self, samples: Sequence[tuple[Any, dict[str, Any]]]) -> Batch:
        images, targets = zip(*samples, strict=True)
        out_targets = []
        for t in targets:
            t = dict(t)
            t["boxes"] = exclusive_corners(cast(Tensor, t["boxes"]))
            out_targets.append(t)
        return {"batches": process_images(self.image_processor, list(images)), "targets": out_targets}


class FamilyDataModule(TaskDataModule):
    """``TaskDataModule`` for a family: original-size images through ``image_processor``.

    Built from ``conf/data`` as GLIP's (the job replaces the ``_target_``): the same shots, copies,
    seed, batch sizes and workers.
    """

    def __init__(
        self,
        task: Task,
        prompt: EncodedPrompt,
        image_processor: Any,
        shots: int | str,
        copies: int,
        seed: int,
        batch_size: int,
        eval_batch_size: int,
        num_workers: int = 0,
        flip_prob: float = 0.5,
    ) -> None:
        # No InputConfig: the family's processor owns sizes and normalisation.
        super().__init__(
            task,
            prompt,
            cast(Any, None),
            shots,
            copies,
            seed,
            batch_size,
            eval_batch_size,
            num_workers,
            resize={},
        )
        self.flip_prob = flip_prob
        self.collate = FamilyCollate(image_processor)  # type: ignore[assignment]

    def transforms(self, split: str) -> Compose:
        """Original images (PIL, as the processor reads them); training flips them."""
        return Compose([RandomHorizontalFlip(self.flip_prob)] if split == "train" else [])
