"""The LightningModule: one GLIP, one task prompt, one adaptation mode.

What the official trainer does per step (``engine/trainer.py``, glip_spec.md 4.7 and 6.11) lives
here: skip a batch when more than 10% of its images have no box, zero a non-finite loss, and step
and log. The evaluation protocol around it (history, plateau schedule, best checkpoint, early
stop) is :mod:`adapt.train.protocol`.

The prompt is fixed per task (all categories in label order, official ``DISABLE_SHUFFLE``), so when
the language backbone is frozen its output is computed once and reused: prompt tuning, linear
probing, LoRA and zero-shot never run BERT per step. Likewise a frozen, eval-mode backbone's output
is kept per training view (``adapt.train.feature_cache``), and ``use_checkpoint: auto`` is decided
per step (``adapt.train.checkpointing``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch import Tensor

from adapt.model import GLIP, TextFeatures
from adapt.modes import ModePolicy
from adapt.prompt import EncodedPrompt
from adapt.train.checkpointing import resolve_fusion_checkpointing
from adapt.train.datamodule import interleave
from adapt.train.feature_cache import FeatureCache, view_keys

# Official MAX_NEG_PER_BATCH: a batch is skipped when more than this fraction of images has no box.
MAX_EMPTY_FRACTION = 0.1
VAL_METRIC = "val/ap"

Evaluator = Callable[[str, list[dict[str, Any]]], dict[str, Any]]


class GLIPAdaptation(L.LightningModule):
    """Train/evaluate ``model`` under ``policy`` on the task described by ``prompt``.

    ``evaluator(split, predictions)`` turns the collected per-image predictions (``boxes``,
    ``scores``, ``labels`` in network-input pixels plus the dataset target) into COCO metrics; the
    job wires it to ``adapt.evaluate`` and the split's ground truth.
    """

    def __init__(
        self,
        model: GLIP,
        policy: ModePolicy,
        prompt: EncodedPrompt,
        optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer] | None = None,
        evaluator: Evaluator | None = None,
        seed: int = 0,
        feature_cache_mb: float = 0,
    ) -> None:
        super().__init__()
        self.model = model
        self.policy = policy
        self.prompt = prompt
        # The mode's instantiated `optimizer:` node (conf/mode), called with the model to train.
        self.optimizer_factory = optimizer
        self.evaluator = evaluator
        self.seed = seed
        self.trainable = policy.apply(model)
        # Checkpoints hold the trainable tensors only (see on_save_checkpoint).
        self.strict_loading = False
        self._text_cache: dict[torch.device, TextFeatures] = {}
        self.feature_cache = FeatureCache(int(feature_cache_mb * 2**20))
        self._predictions: list[dict[str, Any]] = []
        self.last_eval: dict[str, Any] | None = None
        self.skipped_batches = 0

    # ------------------------------------------------------------------------------------------
    # Module modes and text

    def train(self, mode: bool = True) -> GLIPAdaptation:
        """Lightning calls this at every epoch start; re-apply the mode's eval-mode modules."""
        super().train(mode)
        self.policy.set_module_modes(self.model)
        return self

    def text_cached(self) -> bool:
        """BERT's output can be reused when nothing it reads trains and it runs in eval mode."""
        frozen = not any(p.requires_grad for p in self.model.text_parameters())
        return frozen and "language_backbone" in self.policy.eval_modules

    def text_features(self, batch_size: int, batch: Mapping[str, Any] | None = None) -> TextFeatures:
        """Text features of the task prompt (or of the batch's own ``input_ids``), batch-expanded."""
        if batch is not None and "input_ids" in batch:
            ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
            if self.text_cached():
                with torch.no_grad():
                    return self.model.encode_text(ids, mask)
            return self.model.encode_text(ids, mask)
        if not self.text_cached():
            ids = self.prompt.input_ids[None].expand(batch_size, -1).to(self.device)
            mask = self.prompt.attention_mask[None].expand(batch_size, -1).to(self.device)
            return self.model.encode_text(ids, mask)
        text = self._text_cache.get(self.device)
        if text is None:
            text = self._encode_prompt_once()
            self._text_cache = {self.device: text}
        return TextFeatures(
            hidden=text.hidden.expand(batch_size, -1, -1),
            mask=text.mask.expand(batch_size, -1),
            embedded=text.embedded.expand(batch_size, -1, -1) if text.embedded is not None else None,
        )

    @torch.no_grad()
    def _encode_prompt_once(self) -> TextFeatures:
        bert = self.model.language_backbone
        was_training = bert.training
        bert.eval()
        try:
            ids = self.prompt.input_ids[None].to(self.device)
            mask = self.prompt.attention_mask[None].to(self.device)
            return self.model.encode_text(ids, mask)
        finally:
            bert.train(was_training)

    # ------------------------------------------------------------------------------------------
    # Training

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Dropout, DropBlock and drop-path draws depend on (seed, step) only, not on what consumed
        # the global RNG before (data loader set-up, a resume): a resumed run reproduces the
        # uninterrupted one.
        torch.manual_seed((self.seed * 7919 + self.global_step) % (2**63 - 1))

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor | None:
        targets = batch["targets"]
        empty, total = global_counts(
            sum(1 for t in targets if len(t["boxes"]) == 0), len(targets), self.device
        )
        if empty > MAX_EMPTY_FRACTION * total:
            # Official MAX_NEG_PER_BATCH: skip (no step) when > 10% of the images have no box.
            self.skipped_batches += 1
            return None
        images = batch["images"]
        resolve_fusion_checkpointing(self.model, images)
        text = self.text_features(images.shape[0], batch)
        cached = self.cached_inputs(batch, text)
        losses = self.model(images, batch["image_sizes"], text=text, targets=targets, **cached)
        assert isinstance(losses, dict)
        loss = losses["total"]
        if not torch.isfinite(loss):
            # Official: a NaN/Inf loss is zeroed and the step still happens (AdamW's decay and
            # momentum move on); a zero connected to every trainable tensor keeps that behaviour.
            loss = sum(
                (p.sum() * 0.0 for p in self.model.parameters() if p.requires_grad), loss.new_zeros(())
            )
        bs = images.shape[0]
        for key, value in losses.items():
            self._log(f"train/{key}", value.detach(), batch_size=bs, prog_bar=key == "total")
        return loss

    # ------------------------------------------------------------------------------------------
    # Frozen features computed once (adapt.train.feature_cache)

    def backbone_cacheable(self) -> bool:
        """Swin + FPN are a pure function of their input: nothing in them trains or runs in train mode."""
        backbone = self.model.backbone
        return not any(p.requires_grad for p in backbone.parameters()) and not any(
            m.training for m in backbone.modules()
        )

    def tower_cacheable(self, batch: Mapping[str, Any]) -> bool:
        """The tower's output is a function of the view: cache_tower policy, frozen eval-mode tower,
        the backbone cacheable, and the fixed task prompt through a frozen BERT (no offset)."""
        tower = self.model.head.dyhead_tower
        return (
            self.policy.cache_tower
            and self.backbone_cacheable()
            and self.text_cached()
            and "input_ids" not in batch
            and self.model.prompt_offset is None
            and not any(p.requires_grad for p in tower.parameters())
            and not any(m.training for m in tower.modules())
        )

    def cached_inputs(self, batch: Mapping[str, Any], text: TextFeatures) -> dict[str, Any]:
        """``features=`` or ``fused=`` for the model from the cache (filled on a miss), or nothing."""
        cache = self.feature_cache
        if not cache.enabled or not self.backbone_cacheable():
            return {}
        keys = view_keys(batch)
        if keys is None:
            return {}
        images = batch["images"]
        if self.tower_cacheable(batch):
            hit = cache.get(keys)
            if hit is not None:
                return {"fused": (hit[:-1], hit[-1])}
            with torch.no_grad():
                visual, lang = self.model.head.tower(self.model.backbone(images), text)
            cache.put(keys, [*visual, lang])
            return {"fused": (visual, lang)}
        hit = cache.get(keys)
        if hit is not None:
            return {"features": hit}
        with torch.no_grad():
            features = self.model.backbone(images)
        cache.put(keys, features)
        return {"features": features}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # The plateau schedule is stepped by FewShotProtocol right after each evaluation (official
        # order), not by Lightning at epoch end, so that its state is saved with the resume point.
        if self.optimizer_factory is None:
            raise ValueError("training needs an optimizer factory (a mode's `optimizer:` node)")
        return self.optimizer_factory(self.model)

    def _log(self, name: str, value: Any, **kwargs: Any) -> None:
        # The module also runs outside a Trainer (tests, notebooks): log only when attached.
        if self._trainer is not None:
            self.log(name, value, **kwargs)

    # ------------------------------------------------------------------------------------------
    # Evaluation

    def _predict(self, batch: Mapping[str, Any]) -> None:
        images = batch["images"]
        text = self.text_features(images.shape[0])
        detections = self.policy.detect(self.model, images, batch["image_sizes"], text, self.prompt)
        for det, target in zip(detections, batch["targets"], strict=True):
            self._predictions.append(
                {
                    "boxes": det["boxes"].cpu(),
                    "scores": det["scores"].cpu(),
                    "labels": det["labels"].cpu(),
                    "target": target,
                }
            )

    def on_validation_epoch_start(self) -> None:
        self._predictions = []

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._predict(batch)

    def on_validation_epoch_end(self) -> None:
        metrics = self._evaluate("val")
        self._log(VAL_METRIC, float(metrics.get("ap") or 0.0), prog_bar=True, batch_size=1)

    def on_test_epoch_start(self) -> None:
        self._predictions = []

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._predict(batch)

    def on_test_epoch_end(self) -> None:
        metrics = self._evaluate("test")
        for key in ("ap", "ap50", "ap75"):
            self._log(f"test/{key}", float(metrics.get(key) or 0.0), batch_size=1)

    def _evaluate(self, split: str) -> dict[str, Any]:
        if self.evaluator is None:
            raise RuntimeError("GLIPAdaptation needs an evaluator to compute COCO AP")
        metrics = self.evaluator(split, gather_predictions(self._predictions))
        self._predictions = []
        self.last_eval = {
            "split": split,
            "step": int(self.global_step),
            "epoch": int(self.current_epoch),
            **metrics,
        }
        return metrics

    # ------------------------------------------------------------------------------------------
    # Checkpoints: only what trains (prompt offset, linear head, adapters) for small files.

    def trainable_state_dict(self) -> dict[str, Tensor]:
        params = dict(self.model.named_parameters())
        return {name: params[name].detach() for name in self.trainable}

    def load_trainable(self, state: Mapping[str, Tensor]) -> None:
        """Load trainable tensors (adapt names, without the ``model.`` prefix)."""
        missing = [n for n in self.trainable if n not in state]
        if missing:
            raise KeyError(
                f"checkpoint lacks trainable tensors {missing[:5]}{'...' if len(missing) > 5 else ''}"
            )
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name in self.trainable:
                params[name].copy_(state[name].to(params[name].device, params[name].dtype))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = {f"model.{n}" for n in self.trainable}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        expected = {f"model.{n}" for n in self.trainable}
        missing = sorted(expected - set(checkpoint["state_dict"]))
        if missing:
            raise KeyError(
                f"resume checkpoint lacks trainable tensors {missing[:5]}: was it saved in another mode?"
            )


def global_counts(empty: int, images: int, device: torch.device) -> tuple[int, int]:
    """(images without a box, images) of the global batch: every rank skips a batch, or none does
    (a rank that skips alone would leave the others waiting in the gradient all-reduce)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return empty, images
    counts = torch.tensor([empty, images], dtype=torch.int64, device=device)
    dist.all_reduce(counts)
    return int(counts[0]), int(counts[1])


def gather_predictions(predictions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every rank's predictions in dataset order, on every rank (one process: unchanged).

    The evaluation loaders deal images round robin without padding (``DistributedEvalSampler``),
    so the gathered list is the single-process list and the AP is exactly the single-process AP;
    each rank computes it, so the plateau schedule and early stopping decide alike everywhere.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return predictions
    per_rank: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(per_rank, predictions)
    return interleave(per_rank)


def trainable_counts(model: GLIP) -> dict[str, int]:
    """Trainable and total parameter counts (results.json ``params``)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": total}


def predictions_and_targets(
    predictions: Sequence[Mapping[str, Any]],
) -> tuple[list[dict[str, Tensor]], list[Any]]:
    """Split the module's collected predictions into (detections, dataset targets)."""
    return [{k: p[k] for k in ("boxes", "scores", "labels")} for p in predictions], [
        p["target"] for p in predictions
    ]
