"""Adaptation modes: one policy class per mode, selected by its YAML and named in its exports.

A mode is everything that differs between adaptation methods, in one :class:`ModePolicy`
subclass: which parameters train (adding new ones first, as prompt tuning and LoRA do), which
modules run in eval mode, what the run exports and what an export gives back for inference, its
report label and whether it trains at all. ``conf/mode/<name>.yaml`` builds the policy with a
``policy: {_target_: ...}`` node (configuration, instantiated by Hydra); an export records the
policy's registered *name* (:mod:`adapt.modes.registry`), so loading one never imports anything.

The official code spreads a mode over three places (``finetune.train()``, the model constructor and
``GeneralizedVLRCNN.train()``, glip_spec.md section 3); a policy does both halves:

* :meth:`ModePolicy.apply` sets ``requires_grad`` once, before the optimiser is built (the optimiser
  then holds exactly the trainable set, like the official ``make_optimizer``);
* :meth:`ModePolicy.set_module_modes` runs after *every* ``model.train()`` (Lightning calls it at
  each epoch start) and puts the frozen parts back into eval mode, as the official ``train()``
  override does. Which parts stay in train mode matters numerically: in linear probing the frozen
  fusion and head BERT layers keep their dropout on, in prompt tuning nothing is stochastic.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from adapt.export import Export, ExportError, prompt_fields, save_export
from adapt.model import GLIP, TextFeatures
from adapt.prompt import MAX_QUERY_LEN, CaptionPrompt, EncodedPrompt, encode_prompt

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

FROZEN_TRUNK = ("backbone", "language_backbone")


@dataclass(frozen=True)
class InferenceText:
    """What detection with an applied export needs on the text side.

    ``prompt`` is the run's caption (class names, labels, label -> tokens). ``features`` are the
    text features of that caption as the run computed them (a learned prompt's embeddings): when
    set, the detector needs no text encoder at all; when None, the model's own BERT encodes the
    caption. ``ensemble`` lists the captions of a prompt ensemble (``mode=zero_ensemble``), whose
    detections are combined per anchor.
    """

    prompt: EncodedPrompt
    features: TextFeatures | None = None
    # A prompt ensemble (adapt.model.ensemble): every caption of the same classes, ``prompt`` first,
    # detected together and combined per anchor; empty for a single caption.
    ensemble: tuple[EncodedPrompt, ...] = ()

    def batch(self, batch_size: int, device: torch.device | str | None = None) -> TextFeatures:
        """The stored features for a batch of ``batch_size`` images."""
        if self.features is None:
            raise ValueError("this export stores no text features: encode its prompt with the model")
        f = self.features
        return TextFeatures(
            hidden=f.hidden.to(device).expand(batch_size, -1, -1),
            mask=f.mask.to(device).expand(batch_size, -1),
            embedded=f.embedded.to(device).expand(batch_size, -1, -1) if f.embedded is not None else None,
        )


class ModePolicy:
    """One adaptation mode. Subclasses set the class attributes and :meth:`trains_parameter`.

    ``name`` is the registered name (set by :func:`adapt.modes.register_mode`); ``eval_modules``
    are put in eval mode after every ``.train()``; ``label`` titles the mode's table in the report;
    ``trains`` False means the job only evaluates (and exports nothing, unless :attr:`exports`);
    ``per_sample_captions`` False means the mode works on the task's one caption (it lays out or
    multiplies it), so a grounding task, whose samples bring their own, is refused.
    """

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    trains: ClassVar[bool] = True
    per_sample_captions: ClassVar[bool] = True
    eval_modules: tuple[str, ...] = ()
    # The frozen tower's output is cached per training view (adapt.train.feature_cache).
    cache_tower: bool = False

    def __init__(self) -> None:
        self._trainable: list[str] = []

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    @property
    def title(self) -> str:
        return self.label or self.name

    @property
    def exports(self) -> bool:
        """Whether a run leaves an export: the training modes, and an evaluation-only mode whose
        detections need more than the base model (a prompt ensemble's captions)."""
        return self.trains

    # -- the task's caption and detection --------------------------------------------------------

    def encode_prompt(
        self,
        class_names: Sequence[str],
        tokenizer: PreTrainedTokenizerFast,
        caption_prompts: Sequence[CaptionPrompt | None] | None = None,
        max_query_len: int = MAX_QUERY_LEN,
    ) -> EncodedPrompt:
        """The task's caption (a mode that learns words of it, as context tokens do, lays it out)."""
        return encode_prompt(class_names, tokenizer, caption_prompts, max_query_len=max_query_len)

    def detect(
        self,
        model: GLIP,
        images: Tensor,
        image_sizes: Sequence[tuple[int, int]],
        text: TextFeatures,
        prompt: EncodedPrompt,
    ) -> list[dict[str, Tensor]]:
        """Evaluation detections of a batch, given the task prompt's text features (a prompt
        ensemble detects with several captions)."""
        out = model(images, image_sizes, text=text, label_to_tokens=prompt.label_to_tokens)
        assert isinstance(out, list)
        return out

    # -- training --------------------------------------------------------------------------------

    def prepare(self, model: GLIP) -> None:
        """Add what the mode trains but the base model lacks (a prompt offset, adapters)."""

    def trains_parameter(self, name: str, model: GLIP) -> bool:
        raise NotImplementedError(f"{type(self).__name__} must say which parameters train")

    def apply(self, model: GLIP) -> list[str]:
        """Set ``requires_grad`` for this mode (after :meth:`prepare`).

        Returns the trainable parameter names, in ``named_parameters`` order.
        """
        self.prepare(model)
        model.requires_grad_(False)
        for name, param in model.named_parameters():
            param.requires_grad_(self.trains and self.trains_parameter(name, model))
        self._trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        self.set_module_modes(model)
        return list(self._trainable)

    def set_module_modes(self, model: GLIP) -> None:
        """Re-apply the official module modes (call after ``model.train()``)."""
        if not model.training:
            return  # eval() already put everything in eval mode
        for path in self.eval_modules:
            model.get_submodule(path).eval()

    @property
    def trainable(self) -> list[str]:
        return list(self._trainable)

    # -- export ----------------------------------------------------------------------------------

    def export_tensors(
        self, model: GLIP, trainable: Mapping[str, Tensor], prompt: EncodedPrompt
    ) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
        """The tensors a run exports, and peft's adapter config when they are in peft's format.

        By default the trained tensors under adapt names (the two-file export).
        """
        return dict(trainable), None

    def apply_export(self, export: Export, model: GLIP) -> GLIP:
        """Put an export's tensors onto ``model`` (prepared like a training run's)."""
        self.prepare(model)
        return load_named_tensors(
            export, model, {k: v for k, v in export.tensors.items() if not k.startswith("prompt.")}
        )

    def inference_text(self, export: Export) -> InferenceText:
        """What detection needs on the text side: by default the run's caption, encoded by BERT."""
        return InferenceText(export.encoded_prompt())

    def load_export(self, export: Export, model: GLIP) -> InferenceText:
        """Apply ``export`` to ``model`` (architecture checked first) and return its text side."""
        export.check_model(model)
        self.apply_export(export, model)
        return self.inference_text(export)


def load_named_tensors(export: Export, model: GLIP, tensors: Mapping[str, Tensor]) -> GLIP:
    """Copy ``tensors`` (adapt parameter names) into ``model``; each mismatch names the file."""
    params = dict(model.named_parameters())
    where = export.tensors_file
    unknown = sorted(set(tensors) - set(params))
    if unknown:
        raise ExportError(f"{where}: tensors {unknown[:5]} are not parameters of the model")
    for name, value in tensors.items():
        if value.shape != params[name].shape:
            raise ExportError(
                f"{where}: tensor {name!r} has shape {list(value.shape)}, "
                f"the model's parameter has {list(params[name].shape)}"
            )
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))
    return model


def positive_int(key: str, value: Any, minimum: int) -> int:
    """``mode.policy.<key>``'s ``value``, an int of at least ``minimum`` (the message names both)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"mode.policy.{key}={value!r} must be an integer of at least {minimum}")
    return value


def module_training_flags(model: GLIP) -> dict[str, bool]:
    """The module flags the oracle fixture lists (``requires_grad_modes.json``), in adapt names."""
    return {
        "backbone.body": model.backbone.body.training,
        "backbone.fpn": model.backbone.fpn.training,
        "language_backbone": model.language_backbone.training,
        "rpn.head": model.head.training,
    }


@torch.no_grad()
def export_run(
    out_dir: str | os.PathLike[str],
    model: GLIP,
    policy: ModePolicy,
    trainable: Mapping[str, Tensor],
    prompt: EncodedPrompt,
    base_model: Mapping[str, Any],
    mode: str | None = None,
    task: str | None = None,
    eval_batch_size: int | None = None,
) -> Path:
    """Export a trained run: the tensors ``policy`` exports, with the metadata that makes them mean
    something (base weights, architecture with the run's test-time settings, the caption).

    ``mode`` is the run's mode name (default: the policy's; ``linear_cached``, the config the run
    chose), recorded beside the policy's registered name and its report title (``mode_label``:
    "linear probing (cached tower)"), which tells apart two configs of one policy. ``model.cfg``
    must be the configuration the run tested with: its ``input`` and ``inference`` sections, with
    ``eval_batch_size`` (padding depends on the batch), are what reproduces the run's detections.
    """
    extra: dict[str, Any] = {
        "task": task,
        "policy": policy.name,
        "mode_label": policy.title,
        "eval_batch_size": eval_batch_size,
        "arch": model.cfg.to_dict(),
        **prompt_fields(prompt, model.cfg.language.tokenizer),
    }
    tensors, peft_config = policy.export_tensors(model, trainable, prompt)
    return save_export(out_dir, mode or policy.name, tensors, base_model, extra, peft_config)
