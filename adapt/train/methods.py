"""The adaptation methods the field compares GLIP's against, one policy class each.

* :class:`FusionPromptTuning` (``mode=fusion_prompt``): SDPT's learnable tokens in the fusion
  attention's space (``adapt.model.fusion_prompt``);
* :class:`ContextPromptTuning` (``mode=context_prompt``): CoOp / DetPro context vectors in BERT's
  input embedding space before every class name (``adapt.model.context_prompt``);
* :class:`PromptEnsemble` (``mode=zero_ensemble``): CLIP's prompt-template ensemble, zero-shot,
  combined at the class-score level (``adapt.model.ensemble``).

Each is selected by ``conf/mode/<name>.yaml`` (``policy._target_`` names the class here, the
``policy`` node's other keys are its settings) and runs under the same protocol, data, seeds and
report as the paper's modes (``adapt.train.modes``). Backbone, BERT and head stay frozen and in
eval mode in all three, as in GLIP's own prompt tuning: only the method's tensors change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from adapt.model import GLIP, TextFeatures
from adapt.model.context_prompt import ContextPrompt, context_words, encode_context_prompt
from adapt.model.fusion import VLFuse
from adapt.model.fusion_prompt import INITS, enable_fusion_prompts
from adapt.prompt import MAX_QUERY_LEN, CaptionPrompt, EncodedPrompt, encode_prompt
from adapt.train.modes import FROZEN_TRUNK, ModePolicy

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

    from adapt.detector import Detector
    from adapt.train.export import Export

FUSION_PROMPT_TOKENS = "b_attn.attn.fusion_prompt.tokens"  # the tensor name under each VLFuse
CONTEXT = "context_prompt.context"
CONTEXT_POSITIONS = "context_prompt.positions"


def _positive_int(key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"mode.policy.{key}={value!r} must be an integer of at least {minimum}")
    return value


class FusionPromptTuning(ModePolicy):
    """SDPT: ``num_tokens`` learnable tokens in each chosen fusion layer's 2048-wide attention space,
    mapped into the image stream through the pseudo-inverse of the frozen query projection. Only
    the tokens train; backbone, BERT and the whole head (fusion included) are frozen, in eval mode.

    ``layers``: indices of the fusion layers that get tokens (None: every one, SDPT's default).
    """

    label = "fusion prompts (SDPT)"
    eval_modules = (*FROZEN_TRUNK, "head")

    def __init__(
        self, name: str, num_tokens: int = 100, layers: Sequence[int] | None = None, init: str = "uniform"
    ) -> None:
        super().__init__(name)
        self.num_tokens = _positive_int("num_tokens", num_tokens, 1)
        if layers is not None and (
            isinstance(layers, str | bytes)
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers)
        ):
            raise ValueError(f"mode.policy.layers={layers!r} must be null (all) or a list of layer indices")
        self.layers = None if layers is None else list(layers)
        if init not in INITS:
            raise ValueError(f"mode.policy.init={init!r} must be one of {', '.join(INITS)}")
        self.init = init

    def prepare(self, model: GLIP) -> None:
        enable_fusion_prompts(model, self.num_tokens, self.layers, self.init)

    def trains_parameter(self, name: str, model: GLIP) -> bool:
        return name.endswith(".fusion_prompt.tokens")

    def apply_export(self, export: Export, model: GLIP) -> GLIP:
        """The exported tokens decide the layers and token counts (the tensors name their layers)."""
        from adapt.train.export import ExportError, load_named_tensors

        fusion = [n for n, m in model.named_modules() if isinstance(m, VLFuse)]
        names = [f"{n}.{FUSION_PROMPT_TOKENS}" for n in fusion]
        found = {i: export.tensors[n] for i, n in enumerate(names) if n in export.tensors}
        unknown = sorted(set(export.tensors) - set(names))
        if not found or unknown:
            raise ExportError(
                f"{export.metadata_file}: a fusion_prompt export holds the tokens of fusion layers "
                f"({names[:1]}...); found {sorted(export.tensors)[:4]}"
            )
        for i, tokens in found.items():
            enable_fusion_prompts(model, int(tokens.shape[0]), [i], "zeros")
        return load_named_tensors(export, model, dict(export.tensors))


class ContextPromptTuning(ModePolicy):
    """CoOp / DetPro: ``length`` context vectors in BERT's input embedding space before every class
    name, shared by all classes or one set per class (``class_specific``), trained through the frozen
    BERT and head (both in eval mode). The export holds the encoded caption, so detection needs no
    text encoder.

    ``init_words`` (e.g. "a photo of a", as many word pieces as ``length``): the vectors start as
    those words' embeddings, so the untrained context detects exactly like the written caption;
    None: a normal draw of standard deviation ``init_std`` (CoOp's 0.02).
    """

    label = "context tokens (CoOp)"
    eval_modules = (*FROZEN_TRUNK, "head")

    def __init__(
        self,
        name: str,
        length: int = 4,
        class_specific: bool = False,
        init_words: str | None = None,
        init_std: float = 0.02,
    ) -> None:
        super().__init__(name)
        self.length = _positive_int("length", length, 0)
        self.class_specific = bool(class_specific)
        if init_words is not None and not isinstance(init_words, str):
            raise ValueError(f"mode.policy.init_words={init_words!r} must be words or null")
        self.init_words = init_words
        self.init_std = float(init_std)
        self._caption: tuple[EncodedPrompt, Tensor] | None = None

    def encode_prompt(
        self,
        class_names: Sequence[str],
        tokenizer: PreTrainedTokenizerFast,
        caption_prompts: Sequence[CaptionPrompt | None] | None = None,
        max_query_len: int = MAX_QUERY_LEN,
    ) -> EncodedPrompt:
        """The task caption with the context words before every class name (their positions kept)."""
        words = context_words(self.length, self.init_words, tokenizer)
        prompt, positions = encode_context_prompt(
            class_names, tokenizer, words, caption_prompts, max_query_len=max_query_len
        )
        self._caption = (prompt, positions)
        return prompt

    def prepare(self, model: GLIP) -> None:
        if model.context_prompt is not None:
            return
        if self._caption is None:
            raise ValueError(
                f"mode={self.name} lays out the task caption itself: build the prompt with the policy's "
                "encode_prompt (adapt.train.job.task_prompt(task, model, policy)) before applying it"
            )
        prompt, positions = self._caption
        bert = model.language_backbone
        classes, length = positions.shape
        dim = model.cfg.language.hidden_size
        ref = bert.embeddings.word_embeddings.weight
        with torch.no_grad():
            if self.init_words is not None:
                context = bert.embeddings.word_embeddings(prompt.input_ids[positions[0]].to(ref.device))
            else:
                context = torch.empty(length, dim, device=ref.device, dtype=ref.dtype).normal_(
                    0.0, self.init_std
                )
            if self.class_specific:
                context = context[None].expand(classes, -1, -1)
        module = ContextPrompt(context.detach().clone(), positions, prompt.input_ids)
        model.context_prompt = module.to(ref.device)

    def trains_parameter(self, name: str, model: GLIP) -> bool:
        return name == CONTEXT

    @torch.no_grad()
    def export_tensors(
        self, model: GLIP, trainable: Mapping[str, Tensor], prompt: EncodedPrompt
    ) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
        """The encoded caption with the learned context (what detection reads, no BERT needed) and
        the context itself with its token positions (to go on training, or to inspect)."""
        assert model.context_prompt is not None
        bert = model.language_backbone
        was_training = bert.training
        bert.eval()
        device = model.context_prompt.context.device
        text = model.encode_text(prompt.input_ids[None].to(device), prompt.attention_mask[None].to(device))
        bert.train(was_training)
        assert text.embedded is not None
        tensors = {
            "prompt.hidden": text.hidden,
            "prompt.embedded": text.embedded,
            "prompt.attention_mask": prompt.attention_mask[None],
            "prompt.input_ids": prompt.input_ids[None],
            CONTEXT: trainable[CONTEXT],
            CONTEXT_POSITIONS: model.context_prompt.positions,
        }
        return tensors, None

    def apply_export(self, export: Export, model: GLIP) -> GLIP:
        """The learned context back on a model with its text encoder (it then encodes the caption)."""
        from adapt.train.export import ExportError

        t = export.tensors
        try:
            module = ContextPrompt(t[CONTEXT].clone(), t[CONTEXT_POSITIONS], t["prompt.input_ids"][0])
        except (KeyError, ValueError) as exc:
            raise ExportError(f"{export.metadata_file}: not a context_prompt export ({exc})") from exc
        if module.positions.numel() and int(module.positions.max()) >= module.input_ids.shape[0]:
            raise ExportError(f"{export.metadata_file}: context positions lie outside the caption")
        ref = model.language_backbone.embeddings.word_embeddings.weight
        model.context_prompt = module.to(ref.device, ref.dtype)
        return model

    def attach_export(self, export: Export, detector: Detector) -> None:
        """As a prompt-tuning export: the stored embeddings replace the text encoder, which is dropped."""
        detector.model.language_backbone = None  # type: ignore[assignment]
        detector.prompt = export


# CLIP's templates (Radford et al. 2021, "prompt ensembling"), a few that suit detection captions.
DEFAULT_TEMPLATES = ("a photo of a {}.", "a photo of the small {}.", "a photo of the large {}.")
ENSEMBLE = "ensemble."  # export tensor prefix: ensemble.input_ids [J, L], .attention_mask, .positive_map


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


class PromptEnsemble(ModePolicy):
    """CLIP's prompt ensembling, zero-shot: the task's classes under several caption templates,
    detected with Swin + FPN once and the head once per template, and combined per anchor at the
    class-score level (mean of the templates' per-class sigmoid scores, centerness and box deltas;
    see ``adapt.model.ensemble`` for why not earlier). Nothing trains; the export records the
    templates' tokenised captions, so ``adapt.predict --prompt`` detects the same way.

    ``templates``: strings with one ``{}``; ``task_prompt``: also the task's own caption (its manual
    prompts, the zero-shot caption), as the first member.
    """

    label = "prompt ensemble (zero-shot)"
    trains = False
    eval_modules = (*FROZEN_TRUNK, "head")

    def __init__(
        self, name: str, templates: Sequence[str] = DEFAULT_TEMPLATES, task_prompt: bool = True
    ) -> None:
        super().__init__(name)
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

    @property
    def exports(self) -> bool:
        return True

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
                "build the task prompt through the policy (adapt.train.job.task_prompt(task, model, policy))"
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
        labels = list(prompt.labels)
        maps = torch.stack([p.positive_map(labels) for p in self.prompts]).to(torch.uint8)
        return {
            f"{ENSEMBLE}input_ids": torch.stack([p.input_ids for p in self.prompts]),
            f"{ENSEMBLE}attention_mask": torch.stack([p.attention_mask for p in self.prompts]),
            f"{ENSEMBLE}positive_map": maps,
        }, None

    def apply_export(self, export: Export, model: GLIP) -> GLIP:
        return model  # nothing of the model changes; the captions are the export's

    def attach_export(self, export: Export, detector: Detector) -> None:
        """predict() without classes detects the run's classes with the run's ensemble of captions."""
        from adapt.train.export import ExportError

        try:
            ids, masks, maps = (
                export.tensors[ENSEMBLE + k] for k in ("input_ids", "attention_mask", "positive_map")
            )
        except KeyError as exc:
            raise ExportError(f"{export.metadata_file}: a zero_ensemble export lacks tensor {exc}") from exc
        labels = [int(v) for v in export.config["labels"]]
        if not (len(ids) == len(masks) == len(maps)) or maps.shape[1] != len(labels):
            raise ExportError(f"{export.metadata_file}: the ensemble's tensors disagree in size")
        members = []
        for input_ids, mask, rows in zip(ids, masks, maps, strict=True):
            label_to_tokens = {
                label: row.nonzero().flatten().tolist()
                for label, row in zip(labels, rows, strict=True)
                if row.any()
            }
            members.append(
                EncodedPrompt(
                    caption=detector.tokenizer.decode(input_ids[mask.bool()], skip_special_tokens=True),
                    class_names=list(export.class_names),
                    labels=labels,
                    input_ids=input_ids.long(),
                    attention_mask=mask.long(),
                    label_to_tokens=label_to_tokens,
                )
            )
        detector.default_prompt = members
