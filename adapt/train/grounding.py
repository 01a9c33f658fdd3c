"""Training and evaluating GLIP on a phrase-grounding task (`adapt.data.grounding_task`).

Detection trains every image against one fixed task prompt; grounding gives every sample its own
caption. What that changes, and nothing else, lives here:

* :class:`GroundingCollate` stacks the samples' tokens into the batch's ``input_ids`` /
  ``attention_mask`` [B, L] and keeps each box's positive map over its own caption, which is what
  GLIP's loss takes (token-level targets, the text mask per sample);
* :class:`GroundingDataModule` opens the splits with the model's tokenizer and text limit;
* :class:`GroundingAdaptation` encodes the batch's captions (the module's ``text_features`` reads
  ``input_ids`` from the batch; the tower cache stays off since the text varies, the backbone cache
  keys a view by the image, shared by its captions), and evaluates by ranking boxes per phrase
  (`adapt.model.grounding.ground_batch`) instead of detecting the task's classes. Predictions are
  gathered across ranks like detections, and the evaluator scores them with the task's metric.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from adapt.data.grounding_task import GroundingDataset, GroundingTask
from adapt.data.transforms import transforms_from_config
from adapt.model import GLIP, TextFeatures
from adapt.model.config import InputConfig
from adapt.model.grounding import ground_batch
from adapt.model.preprocess import batch_images
from adapt.modes import ModePolicy
from adapt.prompt import MAX_QUERY_LEN, load_tokenizer
from adapt.train.datamodule import Batch, TaskDataModule
from adapt.train.module import Evaluator, GLIPAdaptation
from adapt.train.protocol import metric_value

# The batch's own tokens travel beside the targets, not inside them (they are stacked once).
_TEXT_KEYS = ("input_ids", "attention_mask")


class GroundingCollate:
    """Samples -> the model's batch: padded images, sizes, targets and the captions' tokens [B, L]."""

    def __init__(self, input_cfg: InputConfig) -> None:
        self.input_cfg = input_cfg

    def __call__(self, samples: Sequence[tuple[Tensor, dict[str, Any]]]) -> Batch:
        images, targets = zip(*samples, strict=True)
        batch, sizes = batch_images(list(images), self.input_cfg)
        return {
            "images": batch,
            "image_sizes": sizes,
            "targets": [{k: v for k, v in t.items() if k not in _TEXT_KEYS} for t in targets],
            "input_ids": torch.stack([t["input_ids"] for t in targets]),
            "attention_mask": torch.stack([t["attention_mask"] for t in targets]),
        }


class GroundingDataModule(TaskDataModule):
    """The splits of a grounding task, with the few-shot recipe's copies and seeded order.

    Everything but opening a split and collating is :class:`TaskDataModule`'s (copies, samplers,
    DDP); ``prompt`` must be None, since every sample brings its own caption. ``tokenizer`` and
    ``max_query_len`` are the model's (``model.cfg.language``).
    """

    def __init__(
        self,
        task: GroundingTask,
        prompt: None,
        input_cfg: InputConfig,
        shots: int | str,
        copies: int,
        seed: int,
        batch_size: int,
        eval_batch_size: int,
        num_workers: int = 0,
        resize: Mapping[str, Any] | None = None,
        tokenizer: str = "bert-base-uncased",
        max_query_len: int = MAX_QUERY_LEN,
    ) -> None:
        if prompt is not None:
            raise ValueError("a grounding task has no task prompt: each sample brings its own caption")
        super().__init__(
            task,  # type: ignore[arg-type]  # opened through split() below, never as a detection Task
            prompt,  # type: ignore[arg-type]
            input_cfg,
            shots,
            copies,
            seed,
            batch_size,
            eval_batch_size,
            num_workers,
            resize,
        )
        self.grounding_task = task
        self.tokenizer = tokenizer
        self.max_query_len = max_query_len
        self.collate = GroundingCollate(input_cfg)  # type: ignore[assignment]

    def split(self, split: str) -> GroundingDataset:  # type: ignore[override]
        """The split's dataset (opened once): K images for train and val, the whole test split."""
        if split not in self._datasets:
            shots = self.shots if split != "test" else "all"
            if split == "val" and self.shots == 0:
                shots = "all"  # zero-shot validates on the whole split, as for detection
            self._datasets[split] = self.grounding_task.dataset(  # type: ignore[assignment]
                split,
                shots=shots,
                seed=self.seed,
                transforms=transforms_from_config(self.resize, split == "train"),
                tokenizer=load_tokenizer(self.tokenizer),
                max_query_len=self.max_query_len,
            )
        return self._datasets[split]  # type: ignore[return-value]


class GroundingAdaptation(GLIPAdaptation):
    """:class:`GLIPAdaptation` on captions: per-sample text in training, ranked phrases in evaluation.

    ``metric`` is the key of the evaluator's result that the run logs and selects on (the task's
    ``val_metric``, e.g. ``any_box.R@1``); ``max_boxes`` caps each phrase's ranked list.
    """

    def __init__(
        self,
        model: GLIP,
        policy: ModePolicy,
        prompt: None = None,
        optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer] | None = None,
        evaluator: Evaluator | None = None,
        seed: int = 0,
        feature_cache_mb: float = 0,
        metric: str = "any_box.R@1",
        max_boxes: int | None = 100,
    ) -> None:
        # The task prompt is never read: every batch carries its own `input_ids` (text_features).
        super().__init__(model, policy, prompt, optimizer, evaluator, seed, feature_cache_mb)  # type: ignore[arg-type]
        self.metric = metric
        self.max_boxes = max_boxes

    def text_features(self, batch_size: int, batch: Mapping[str, Any] | None = None) -> TextFeatures:
        if batch is None or "input_ids" not in batch:
            raise ValueError("a grounding batch carries its captions' input_ids (GroundingCollate)")
        return super().text_features(batch_size, batch)

    def _predict(self, batch: Mapping[str, Any]) -> None:
        images, targets = batch["images"], batch["targets"]
        text = self.text_features(images.shape[0], batch)
        ranked = ground_batch(
            self.model,
            images,
            batch["image_sizes"],
            text,
            [t["phrase_tokens"] for t in targets],
            self.max_boxes,
        )
        for phrases, target in zip(ranked, targets, strict=True):
            self._predictions.append(
                {
                    "sample": int(target["sample"]),
                    "boxes": [r.boxes.cpu() for r in phrases],
                    "scores": [r.scores.cpu() for r in phrases],
                    "size": tuple(target["size"]),
                    "orig_size": tuple(target["orig_size"]),
                }
            )

    def on_validation_epoch_end(self) -> None:
        metrics = self._evaluate("val")
        value = float(metric_value(metrics, self.metric) or 0.0)
        self._log(f"val/{self.metric}", value, prog_bar=True, batch_size=1)

    def on_test_epoch_end(self) -> None:
        metrics = self._evaluate("test")
        self._log(f"test/{self.metric}", float(metric_value(metrics, self.metric) or 0.0), batch_size=1)
