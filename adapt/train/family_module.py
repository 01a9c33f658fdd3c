"""The LightningModule of a detector family: one family, one task prompt, one mode.

``GLIPAdaptation``'s protocol half never looks inside the model: the seeding per step, the
optimiser factory, the evaluation hooks and the history they feed, the checkpoints that hold only
the trainable tensors and their reloading. A family reuses all of it by subclassing; this module
replaces the half that is GLIP's (text features, the feature cache, the training step and the
prediction step) with the family's own calls:

* text: the text encoder runs once per task prompt when nothing in it trains and it runs in eval
  mode (every mode but ``full``); the family adds the prompt offset itself;
* training: transformers' own loss (``DetectorFamily.forward`` with targets), on each group of
  images of one processed size (``adapt.train.family_data``). transformers divides each loss term by
  the number of target boxes of the images it saw (``clamp(n, min=1)``); the groups' terms are put
  back on one scale, the box count of the whole global batch, so that the step is transformers'
  loss over the batch: one group, one process gives transformers' number exactly; under DDP each
  rank's loss is multiplied by the world size (DDP averages gradients), which gives the
  single-process gradient (the box count is summed over ranks, the part transformers does only
  under ``accelerate``);
* evaluation: the family's evaluation decoding (``DetectorFamily.evaluation``, the model config's
  ``evaluation:``), detections in the original images' pixels, transformers' box convention.

GLIP's skip rule (a batch with more than 10% box-less images makes no step) and its handling of a
non-finite loss apply unchanged: they are the protocol's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import Tensor

from adapt.families import DetectorFamily
from adapt.modes.family import FamilyPolicy
from adapt.prompt import EncodedPrompt
from adapt.train.module import MAX_EMPTY_FRACTION, Evaluator, GLIPAdaptation


class FamilyAdaptation(GLIPAdaptation):
    """Train/evaluate a :class:`~adapt.families.DetectorFamily` under a :class:`FamilyPolicy`.

    ``evaluator(split, predictions)`` as for GLIP; predictions' boxes are in original pixels
    (``DetectorFamily.boxes``).
    """

    def __init__(
        self,
        family: DetectorFamily,
        policy: FamilyPolicy,
        prompt: EncodedPrompt,
        optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer] | None = None,
        evaluator: Evaluator | None = None,
        seed: int = 0,
    ) -> None:
        # The parent's state is model-agnostic (see the module docstring); its GLIP-typed
        # parameters receive the family and its policy, which answer the same calls.
        super().__init__(cast(Any, family), cast(Any, policy), prompt, optimizer, evaluator, seed)
        self.family_policy = policy
        self._raw_text: dict[torch.device, Tensor] = {}

    @property
    def family(self) -> DetectorFamily:
        return cast(DetectorFamily, self.model)

    # ------------------------------------------------------------------------------------------
    # Text

    def text_cached(self) -> bool:
        """The text encoder's output can be reused: nothing in it trains and it runs in eval mode."""
        family = self.family
        if family.text_encoder_dropped:
            return False
        encoder = family.hf.get_submodule(family.text_encoder)
        frozen = not any(p.requires_grad for p in encoder.parameters())
        return frozen and not any(m.training for m in encoder.modules())

    def family_text(self) -> Tensor:
        """The task prompt's text encoder output (before the prompt offset, which the family adds)."""
        if not self.text_cached():
            return self.family.encode_text(self.prompt)
        text = self._raw_text.get(self.device)
        if text is None:
            with torch.no_grad():
                text = self.family.encode_text(self.prompt)
            self._raw_text = {self.device: text}
        return text

    # ------------------------------------------------------------------------------------------
    # Training

    def on_fit_start(self) -> None:
        check_no_accelerate_state()

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor | None:
        targets = batch["targets"]
        empty, total, boxes = global_sums(
            [
                sum(1 for t in targets if len(t["boxes"]) == 0),
                len(targets),
                sum(len(t["boxes"]) for t in targets),
            ],
            self.device,
        )
        if empty > MAX_EMPTY_FRACTION * total:
            self.skipped_batches += 1  # GLIP's rule (official MAX_NEG_PER_BATCH), as for GLIP
            return None
        text = self.family_text()
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        losses: dict[str, Tensor] = {}
        for images in batch["batches"]:
            group = [targets[i] for i in images.index]
            out = self.family(images, self.prompt, text=text, targets=group)
            assert isinstance(out, dict)
            # Back from transformers' scale (this group's boxes) to the global batch's (see above).
            weight = world * max(sum(len(t["boxes"]) for t in group), 1) / max(boxes, 1)
            for key, value in out.items():
                losses[key] = losses[key] + value * weight if key in losses else value * weight
        loss = losses["total"]
        if not torch.isfinite(loss):
            # As for GLIP (official): a zero connected to every trainable tensor, and the step happens.
            loss = sum(
                (p.sum() * 0.0 for p in self.model.parameters() if p.requires_grad), loss.new_zeros(())
            )
        for key, value in losses.items():
            if not key[-1].isdigit():  # the final layer's terms and the total (not each decoder layer's)
                self._log(
                    f"train/{key}", value.detach() / world, batch_size=len(targets), prog_bar=key == "total"
                )
        return loss

    # ------------------------------------------------------------------------------------------
    # Evaluation

    def _predict(self, batch: Mapping[str, Any]) -> None:
        text = self.family_text()
        targets = batch["targets"]
        found: list[dict[str, Tensor] | None] = [None] * len(targets)
        for images in batch["batches"]:
            detections = self.family(images, self.prompt, text=text, settings=self.family.evaluation)
            for j, i in enumerate(images.index):
                found[i] = detections[j]
        for det, target in zip(found, targets, strict=True):
            assert det is not None
            self._predictions.append(
                {
                    "boxes": det["boxes"].cpu(),
                    "scores": det["scores"].cpu(),
                    "labels": det["labels"].cpu(),
                    "target": target,
                }
            )


def global_sums(values: list[int], device: torch.device) -> list[int]:
    """``values`` summed over the ranks (one process: unchanged), in one all-reduce."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    counts = torch.tensor(values, dtype=torch.int64, device=device)
    dist.all_reduce(counts)
    return [int(v) for v in counts]


def check_no_accelerate_state() -> None:
    """transformers' detection losses all-reduce their box count themselves when accelerate's
    ``PartialState`` is initialised in the process (one collective per forward, and a divisor this
    module already accounts for); adapt's Lightning jobs never initialise it."""
    try:
        from accelerate import PartialState
    except ImportError:
        return
    if PartialState._shared_state:
        raise RuntimeError(
            "accelerate's PartialState is initialised in this process: transformers' detection loss "
            "would then average its box count over processes a second time; run adapt's job without "
            "accelerate (Lightning's own strategies: trainer.strategy=ddp)"
        )
