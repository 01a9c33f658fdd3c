"""CoOp / DetPro context tokens (``mode=context_prompt``): learned vectors before every class name.

The policy lays out the task caption itself (:meth:`ContextPromptTuning.encode_prompt`: context
words before each class name, their token positions kept) and trains only the vectors that replace
those words' embeddings in BERT's input (``adapt.model.context_prompt``). Like prompt tuning, the
export stores the encoded caption, so detection needs no text encoder; the raw context and its
positions are exported too, to put the method back on a model (:meth:`apply_export`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerFast

from adapt.export import Export, ExportError
from adapt.model import GLIP
from adapt.model.context_prompt import ContextPrompt, context_words, encode_context_prompt, word_embeddings
from adapt.modes.base import FROZEN_TRUNK, InferenceText, ModePolicy, positive_int
from adapt.modes.prompt import stored_text_features
from adapt.modes.registry import register_mode
from adapt.prompt import MAX_QUERY_LEN, CaptionPrompt, EncodedPrompt

CONTEXT = "context_prompt.context"
CONTEXT_POSITIONS = "context_prompt.positions"


@register_mode("context_prompt")
class ContextPromptTuning(ModePolicy):
    """CoOp / DetPro: ``length`` context vectors in BERT's input embedding space before every class
    name, shared by all classes or one set per class (``class_specific``), trained through the frozen
    BERT and head (both in eval mode).

    ``init_words`` (e.g. "a photo of a", as many word pieces as ``length``): the vectors start as
    those words' embeddings, so the untrained context detects exactly like the written caption;
    None: a normal draw of standard deviation ``init_std`` (CoOp's 0.02).
    """

    label = "context tokens (CoOp)"
    eval_modules = (*FROZEN_TRUNK, "head")
    per_sample_captions = False  # the context sits at the task caption's token positions

    def __init__(
        self,
        length: int = 4,
        class_specific: bool = False,
        init_words: str | None = None,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        self.length = positive_int("length", length, 0)
        self.class_specific = bool(class_specific)
        if init_words is not None and not isinstance(init_words, str):
            raise ValueError(f"mode.policy.init_words={init_words!r} must be words or null")
        self.init_words = init_words
        self.init_std = float(init_std)
        self._caption: tuple[EncodedPrompt, Tensor] | None = None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(length={self.length}, class_specific={self.class_specific}, "
            f"init_words={self.init_words!r})"
        )

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
                "encode_prompt (adapt.runs.job.task_prompt(task, model, policy)) before applying it"
            )
        prompt, positions = self._caption
        table = word_embeddings(model.language_backbone)
        classes, length = positions.shape
        ref = table.weight
        with torch.no_grad():
            if self.init_words is not None:
                context = table(prompt.input_ids[positions[0]].to(ref.device))
            else:
                context = torch.empty(
                    length, model.cfg.language.hidden_size, device=ref.device, dtype=ref.dtype
                ).normal_(0.0, self.init_std)
            if self.class_specific:
                context = context[None].expand(classes, -1, -1)
        model.context_prompt = ContextPrompt(context.detach().clone(), positions, prompt.input_ids).to(
            ref.device
        )

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
        tensors: dict[str, Tensor] = {
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
        t = export.tensors
        try:
            module = ContextPrompt(t[CONTEXT].clone(), t[CONTEXT_POSITIONS], t["prompt.input_ids"][0])
        except (KeyError, ValueError) as exc:
            raise ExportError(f"{export.tensors_file}: not a context_prompt export ({exc})") from exc
        if module.positions.numel() and (
            int(module.positions.min()) < 0 or int(module.positions.max()) >= module.input_ids.shape[0]
        ):
            raise ExportError(f"{export.tensors_file}: context positions lie outside the caption")
        ref = word_embeddings(model.language_backbone).weight
        if module.context.shape[-1] != ref.shape[1]:
            raise ExportError(
                f"{export.tensors_file}: context vectors of width {module.context.shape[-1]}, "
                f"the model's word embeddings have {ref.shape[1]}"
            )
        model.context_prompt = module.to(ref.device, ref.dtype)
        return model

    def inference_text(self, export: Export) -> InferenceText:
        """The stored embeddings of the caption with its learned context: no text encoder needed."""
        return InferenceText(export.encoded_prompt(), stored_text_features(export))

    def load_export(self, export: Export, model: GLIP) -> InferenceText:
        """As prompt tuning: the stored embeddings replace BERT, the model itself is left as it is."""
        export.check_model(model)
        return self.inference_text(export)
