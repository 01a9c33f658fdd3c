"""SDPT's fusion-space prompts (``mode=fusion_prompt``): learnable tokens in the fusion attention.

The tokens live in each prompted fusion layer's 2048-wide attention space and reach the image
stream through the pseudo-inverse of its frozen query projection (``adapt.model.fusion_prompt``
says what they do). Backbone, BERT and the whole head stay frozen in eval mode, as in GLIP's own
prompt tuning; the export holds the tokens under adapt names, and the text is the run's caption,
encoded by BERT.
"""

from __future__ import annotations

from collections.abc import Sequence

from adapt.export import Export, ExportError
from adapt.model import GLIP
from adapt.model.fusion import VLFuse
from adapt.model.fusion_prompt import INITS, enable_fusion_prompts
from adapt.modes.base import FROZEN_TRUNK, ModePolicy, load_named_tensors, positive_int
from adapt.modes.registry import register_mode

FUSION_PROMPT_TOKENS = "b_attn.attn.fusion_prompt.tokens"  # the tensor name under each VLFuse


@register_mode("fusion_prompt")
class FusionPromptTuning(ModePolicy):
    """SDPT: ``num_tokens`` learnable tokens in each chosen fusion layer's attention space, mapped
    into the image stream through the pseudo-inverse of the frozen query projection. Only the
    tokens train; backbone, BERT and the whole head (fusion included) are frozen, in eval mode.

    ``layers``: indices of the fusion layers that get tokens (None: every one, SDPT's default);
    ``init``: uniform(-1, 1) (SDPT's), normal or zeros.
    """

    label = "fusion prompts (SDPT)"
    eval_modules = (*FROZEN_TRUNK, "head")

    def __init__(
        self, num_tokens: int = 100, layers: Sequence[int] | None = None, init: str = "uniform"
    ) -> None:
        super().__init__()
        self.num_tokens = positive_int("num_tokens", num_tokens, 1)
        if layers is not None and (
            isinstance(layers, str | bytes)
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers)
        ):
            raise ValueError(f"mode.policy.layers={layers!r} must be null (all) or a list of layer indices")
        self.layers = None if layers is None else list(layers)
        if init not in INITS:
            raise ValueError(f"mode.policy.init={init!r} must be one of {', '.join(INITS)}")
        self.init = init

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_tokens={self.num_tokens}, layers={self.layers}, init={self.init!r})"
        )

    def prepare(self, model: GLIP) -> None:
        enable_fusion_prompts(model, self.num_tokens, self.layers, self.init)

    def trains_parameter(self, name: str, model: GLIP) -> bool:
        return name.endswith(".fusion_prompt.tokens")

    def apply_export(self, export: Export, model: GLIP) -> GLIP:
        """The exported tokens decide the layers and token counts (the tensor names say the layer)."""
        fusion = [n for n, m in model.named_modules() if isinstance(m, VLFuse)]
        names = [f"{n}.{FUSION_PROMPT_TOKENS}" for n in fusion]
        found = {i: export.tensors[n] for i, n in enumerate(names) if n in export.tensors}
        unknown = sorted(set(export.tensors) - set(names))
        if not found or unknown:
            raise ExportError(
                f"{export.tensors_file}: a fusion_prompt export holds the tokens of the model's fusion "
                f"layers ({names[:1]}...); found {sorted(export.tensors)[:4]}"
            )
        for i, tokens in found.items():
            if tokens.dim() != 2:
                raise ExportError(
                    f"{export.tensors_file}: {names[i]} must be [tokens, dim], got {list(tokens.shape)}"
                )
            enable_fusion_prompts(model, int(tokens.shape[0]), [i], "zeros")
        return load_named_tensors(export, model, dict(export.tensors))
