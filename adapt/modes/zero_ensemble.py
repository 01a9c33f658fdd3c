"""CLIP's prompt ensembling, zero-shot (``mode=zero_ensemble``): several captions, one detection.

The task's classes are written under several caption templates ("a photo of a {}.", ...); the
image backbone runs once, the head once per caption, and the outputs are combined per anchor at
the class-score level (``adapt.model.ensemble`` says why not earlier). Nothing trains
(``evaluates_only: true`` in its YAML), but the run exports the captions' token ids and positive
maps, so ``adapt.predict --prompt <run>/export`` detects with the same ensemble.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerFast

from adapt.export import Export, ExportError
from adapt.model import GLIP, TextFeatures
from adapt.modes.base import FROZEN_TRUNK, InferenceText, ModePolicy
from adapt.modes.registry import register_mode
from adapt.prompt import MAX_QUERY_LEN, CaptionPrompt, EncodedPrompt, encode_prompt

# CLIP's templates (Radford et al. 2021, "prompt ensembling"), a few that suit detection captions.
DEFAULT_TEMPLATES = ("a photo of a {}.", "a photo of the small {}.", "a photo of the large {}.")
ENSEMBLE = "ensemble."  # export tensor prefix: ensemble.input_ids [J, L], .attention_mask, .positive_map
ENSEMBLE_KEYS = ("input_ids", "attention_mask", "positive_map")


def template_prompts(
    template: str, caption_prompts: Sequence[CaptionPrompt | None] | None, classes: int
) -> list[CaptionPrompt]:
    """One caption prompt per class from a template with one ``{}`` (the class name, which stays the
    class's positive span; a manual prompt's ``name`` replaces it). A final "." is dropped: GLIP's
    caption already ends every entry with its ". " separator."""
    if template.count("{}") != 1:
        raise ValueError(f"prompt template {template!r} must contain exactly one {{}} (the class name)")
    prefix, suffix = template.split("{}")
    suffix = suffix.rstrip().rstrip(".")
    names = [p.name if p is not None else None for p in (caption_prompts or [None] * classes)]
    return [CaptionPrompt(prefix=prefix, name=name, suffix=suffix) for name in names]


@register_mode("zero_ensemble")
class PromptEnsemble(ModePolicy):
    """CLIP's prompt ensembling, zero-shot: the task's classes under several caption templates,
    detected with Swin + FPN once and the head once per template, and combined per anchor (mean of
    the templates' per-class sigmoid scores, centerness and box deltas). Nothing trains; the export
    records the captions' tokens, so ``adapt.predict --prompt`` detects the same way.

    ``templates``: strings with one ``{}``; ``task_prompt``: also the task's own caption (its manual
    prompts, the zero-shot caption), as the first member.
    """

    label = "prompt ensemble (zero-shot)"
    trains = False
    eval_modules = (*FROZEN_TRUNK, "head")
    per_sample_captions = False  # the ensemble is of the task's caption

    def __init__(self, templates: Sequence[str] = DEFAULT_TEMPLATES, task_prompt: bool = True) -> None:
        super().__init__()
        if isinstance(templates, str) or not all(isinstance(t, str) for t in templates):
            raise ValueError(f"mode.policy.templates={templates!r} must be a list of strings with one {{}}")
        self.templates = list(templates)
        for template in self.templates:
            template_prompts(template, None, 0)  # checked now, not when the task is encoded
        self.task_prompt = bool(task_prompt)
        if not self.templates and not self.task_prompt:
            raise ValueError("mode.policy: a prompt ensemble needs templates or task_prompt: true")
        self.prompts: list[EncodedPrompt] = []
        self._texts: dict[torch.device, list[TextFeatures]] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(templates={self.templates}, task_prompt={self.task_prompt})"

    @property
    def exports(self) -> bool:
        return True  # the captions are what reproduces its detections

    def encode_prompt(
        self,
        class_names: Sequence[str],
        tokenizer: PreTrainedTokenizerFast,
        caption_prompts: Sequence[CaptionPrompt | None] | None = None,
        max_query_len: int = MAX_QUERY_LEN,
    ) -> EncodedPrompt:
        """Every member's caption; returns the first (the task's own, with ``task_prompt``)."""
        prompts = []
        if self.task_prompt:
            prompts.append(
                encode_prompt(class_names, tokenizer, caption_prompts, max_query_len=max_query_len)
            )
        for template in self.templates:
            members = template_prompts(template, caption_prompts, len(class_names))
            prompts.append(encode_prompt(class_names, tokenizer, members, max_query_len=max_query_len))
        self.prompts, self._texts = prompts, {}
        return prompts[0]

    def trains_parameter(self, name: str, model: GLIP) -> bool:
        return False

    @torch.no_grad()
    def _member_texts(self, model: GLIP, device: torch.device) -> list[TextFeatures]:
        """Each member's BERT features, computed once per device (BERT is frozen, in eval mode)."""
        texts = self._texts.get(device)
        if texts is None:
            bert = model.language_backbone
            was_training = bert.training
            bert.eval()
            texts = [
                model.encode_text(p.input_ids[None].to(device), p.attention_mask[None].to(device))
                for p in self.prompts
            ]
            bert.train(was_training)
            self._texts = {device: texts}
        return texts

    def detect(
        self,
        model: GLIP,
        images: Tensor,
        image_sizes: Sequence[tuple[int, int]],
        text: TextFeatures,
        prompt: EncodedPrompt,
    ) -> list[dict[str, Tensor]]:
        if not self.prompts or prompt.caption != self.prompts[0].caption:
            raise ValueError(
                f"mode={self.name} detects with the captions its encode_prompt built for the task; "
                "build the task prompt through the policy (adapt.runs.job.task_prompt(task, model, policy))"
            )
        n = images.shape[0]
        texts = [
            TextFeatures(t.hidden.expand(n, -1, -1), t.mask.expand(n, -1))
            for t in self._member_texts(model, images.device)
        ]
        out = model(
            images, image_sizes, text=texts, label_to_tokens=[p.label_to_tokens for p in self.prompts]
        )
        assert isinstance(out, list)
        return out

    def export_tensors(
        self, model: GLIP, trainable: Mapping[str, Tensor], prompt: EncodedPrompt
    ) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
        """The members' token ids, attention masks and positive maps [J, classes, L] (label order of
        the export's ``labels``): everything that gives the ensemble its detections besides BERT."""
        if not self.prompts or prompt.caption != self.prompts[0].caption:
            raise ValueError(f"mode={self.name} exports the captions its encode_prompt built for the task")
        labels = list(prompt.labels)
        maps = torch.stack([p.positive_map(labels) for p in self.prompts]).to(torch.uint8)
        return {
            f"{ENSEMBLE}input_ids": torch.stack([p.input_ids for p in self.prompts]),
            f"{ENSEMBLE}attention_mask": torch.stack([p.attention_mask for p in self.prompts]),
            f"{ENSEMBLE}positive_map": maps,
        }, None

    def apply_export(self, export: Export, model: GLIP) -> GLIP:
        return model  # nothing of the model changes; the captions are the export's

    def inference_text(self, export: Export) -> InferenceText:
        """The run's captions, detected together: member 0 is the recorded caption, the others are
        their token ids and positive maps (their text is not recorded, and nothing reads it)."""
        where = export.tensors_file
        try:
            ids, masks, maps = (export.tensors[ENSEMBLE + k] for k in ENSEMBLE_KEYS)
        except KeyError as exc:
            raise ExportError(f"{where}: a zero_ensemble export lacks tensor {exc}") from None
        first = export.encoded_prompt()
        labels = list(first.labels)
        length = first.max_query_len
        if not (
            ids.dim() == masks.dim() == 2
            and maps.dim() == 3
            and len(ids) == len(masks) == len(maps) > 0
            and ids.shape[1] == masks.shape[1] == maps.shape[2] == length
            and maps.shape[1] == len(labels)
        ):
            raise ExportError(
                f"{where}: the ensemble's tensors disagree in size (input_ids {list(ids.shape)}, "
                f"attention_mask {list(masks.shape)}, positive_map {list(maps.shape)}; "
                f"{len(labels)} labels, {length} tokens)"
            )
        if not torch.equal(ids[0].long(), first.input_ids):
            raise ExportError(f"{where}: the ensemble's first caption is not the recorded one")
        members = [first]
        for input_ids, mask, rows in zip(ids[1:], masks[1:], maps[1:], strict=True):
            label_to_tokens = {
                label: row.nonzero().flatten().tolist()
                for label, row in zip(labels, rows, strict=True)
                if row.any()
            }
            members.append(
                EncodedPrompt(
                    caption="",
                    class_names=list(first.class_names),
                    labels=labels,
                    input_ids=input_ids.long(),
                    attention_mask=mask.long(),
                    label_to_tokens=label_to_tokens,
                )
            )
        return InferenceText(first, ensemble=tuple(members))
