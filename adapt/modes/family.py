"""The registered modes on a detector family: the same policies, the family's own parameter groups.

A mode is one registered policy (``conf/mode/<name>.yaml``: its class, its optimiser, its report
label, the name exports record), whatever the detector. GLIP's policies name GLIP's modules; a
detector family (``adapt.families``) names its own groups (``DetectorFamily.linear_modules``,
``frozen_in_full``, ``lora_targets``, ``vision_modules``, ``text_encoder``), and
``adapt.families.modes`` / ``adapt.families.exports`` apply them. :class:`FamilyPolicy` is the seam
between the two: it takes the policy the job built from the mode config and routes every question
a policy answers (what to add, what trains, which modules run in eval mode, what to export, how an
export goes back, what inference needs on the text side) to the family's groups under the policy's
mode. GLIP's policies are not touched, so GLIP runs exactly as before.

A policy of another registered name runs on a family when it subclasses a built-in policy (it then
has that policy's family semantics); any other is refused by name, since adapt cannot know which of
a family's parameters it means. LoRA takes rank, alpha and dropout from the mode's
``peft.LoraConfig`` and its target modules from the family (the mode's ``target_modules`` name
GLIP's modules); a model config's ``lora_targets`` replaces the family's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import Tensor

from adapt.export import Export, ExportError, prompt_fields, save_export
from adapt.families import DetectorFamily, InferenceSettings
from adapt.families import modes as family_modes
from adapt.families.exports import FamilyExportError, apply_export, check_base_weights, export_tensors
from adapt.modes.base import ModePolicy
from adapt.modes.full import FullFineTuning
from adapt.modes.linear import LinearProbe
from adapt.modes.lora import LoRA
from adapt.modes.prompt import PromptTuning
from adapt.modes.zero import ZeroShot
from adapt.prompt import EncodedPrompt

# The built-in policy classes and the family mode each one means.
BUILT_IN: tuple[tuple[type[ModePolicy], str], ...] = (
    (ZeroShot, "zero"),
    (PromptTuning, "prompt"),
    (LinearProbe, "linear"),
    (FullFineTuning, "full"),
    (LoRA, "lora"),
)


def family_mode(policy: ModePolicy) -> str:
    """The family mode a policy means: its registered name when that is a built-in mode, else the
    built-in policy it subclasses; one sentence otherwise."""
    if policy.name in family_modes.MODES:
        return policy.name
    for cls, mode in BUILT_IN:
        if isinstance(policy, cls):
            return mode
    raise ValueError(
        f"mode {policy.name!r} ({type(policy).__qualname__}) cannot run on a detector family: a family "
        f"runs the built-in modes {list(family_modes.MODES)} (or a policy subclassing one of them), "
        "whose parameter groups each family defines"
    )


class FamilyPolicy:
    """A registered policy applied to a :class:`~adapt.families.DetectorFamily`.

    ``policy`` is the job's policy (built from the mode config); ``prompt`` the task prompt (OWLv2's
    prompt offset has one row per class); ``lora_targets`` the model config's (None: the family's).
    The interface is the one ``GLIPAdaptation`` and the job call on a policy.
    """

    cache_tower = False  # a family caches nothing beyond the text encoder's output
    eval_modules: tuple[str, ...] = ()  # the family says which (DetectorFamily.eval_modules)

    def __init__(self, policy: ModePolicy, prompt: EncodedPrompt, lora_targets: str | None = None) -> None:
        self.policy = policy
        self.mode = family_mode(policy)
        self.prompt = prompt
        self.lora_targets = lora_targets
        self._trainable: list[str] = []

    def __repr__(self) -> str:
        return f"FamilyPolicy({self.policy!r}, mode={self.mode!r})"

    @property
    def name(self) -> str:
        """The registered name exports and checkpoints record (the policy's)."""
        return self.policy.name

    @property
    def title(self) -> str:
        return self.policy.title

    @property
    def trains(self) -> bool:
        return self.policy.trains

    @property
    def trainable(self) -> list[str]:
        return list(self._trainable)

    def lora(self) -> dict[str, Any] | None:
        """LoRA's settings for the family: the mode's peft ``LoraConfig`` and the family's targets."""
        if self.mode != "lora":
            return None
        config = getattr(self.policy, "config", None)
        if config is None:
            raise ValueError("mode=lora needs mode.policy.config (a peft.LoraConfig node)")
        return {
            "r": config.r,
            "alpha": config.lora_alpha,
            "dropout": config.lora_dropout,
            "target_modules": self.lora_targets,
        }

    # -- training ---------------------------------------------------------------------------------

    def prepare(self, family: DetectorFamily) -> None:
        """Add what the mode trains but the family lacks (the prompt offset, LoRA adapters)."""
        family_modes.prepare(family, self.mode, self.prompt, self.lora())

    def trains_parameter(self, name: str, family: DetectorFamily) -> bool:
        return self.trains and family_modes.trains_parameter(family, self.mode, name)

    def apply(self, family: DetectorFamily) -> list[str]:
        """Prepare, set ``requires_grad`` to the mode's set, put the frozen parts in eval mode."""
        self._trainable = family_modes.apply_mode(family, self.mode, self.prompt, self.lora())
        return list(self._trainable)

    def set_module_modes(self, family: DetectorFamily) -> None:
        """Re-apply the mode's eval-mode modules (after every ``.train()``)."""
        family_modes.set_module_modes(family, self.mode)

    # -- export -----------------------------------------------------------------------------------

    def export_tensors(
        self, family: DetectorFamily, trainable: list[str], prompt: EncodedPrompt
    ) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
        """The family's export of this mode; a LoRA config in peft's JSON form (as GLIP's LoRA writes it)."""
        tensors, peft_config = export_tensors(family, self.mode, trainable, prompt)
        if peft_config is not None:
            peft_config = {k: sorted(v) if isinstance(v, set) else v for k, v in peft_config.items()}
            peft_config["inference_mode"] = True
            peft_config["peft_type"] = str(
                getattr(peft_config["peft_type"], "value", peft_config["peft_type"])
            )
            peft_config["task_type"] = getattr(
                peft_config.get("task_type"), "value", peft_config.get("task_type")
            )
        return tensors, peft_config

    def load_export(self, export: Export, family: DetectorFamily) -> Tensor | None:
        """Apply ``export`` to ``family`` (built on the recorded base weights, which are checked first).

        Returns a prompt export's stored text features (the text encoder is dropped), else None."""
        try:
            check_base_weights(export.config["base_model"].get("weights") or {}, family)
            if self.mode == "prompt":
                check_prompt_features(export, family)
            return apply_export(family, self.mode, export.tensors, export.peft_config)
        except FamilyExportError as exc:
            raise ExportError(f"{export.metadata_file}: {exc}") from None


def check_prompt_features(export: Export, family: DetectorFamily) -> None:
    """A prompt export's stored features fit this detector (their width is its text width)."""
    hidden = export.tensors.get("prompt.hidden")
    if hidden is None:
        raise FamilyExportError("a prompt export without its stored text features (prompt.hidden)")
    prompt = export.encoded_prompt()
    rows, dim = family.offset_shape(prompt)
    if hidden.shape[-1] != dim or hidden.shape[-2] > rows:
        raise FamilyExportError(
            f"stored text features {list(hidden.shape)} do not fit this {family.name} detector "
            f"(at most {rows} positions of width {dim})"
        )


def family_record(family: DetectorFamily, settings: InferenceSettings) -> dict[str, Any]:
    """What rebuilds the run's detector from a shipped model config, as an export records it: the
    random-init settings (config, processor, seed), and the decoding the run's test used."""
    spec = family.spec
    if spec is None:
        raise ValueError("a family detector built without a model config cannot be exported")
    return {
        "family": family.name,
        "config": dict(spec.config),
        "processor": dict(spec.processor),
        "tokenizer": spec.tokenizer,
        "seed": spec.seed,
        "loss": dict(spec.loss),
        "inference": asdict(settings),
    }


def export_family_run(
    out_dir: str | os.PathLike[str],
    family: DetectorFamily,
    policy: FamilyPolicy,
    prompt: EncodedPrompt,
    model_name: str,
    mode: str | None = None,
    task: str | None = None,
) -> Path:
    """Export a family's trained run (``adapt.export``'s format): the tensors the mode exports, the
    base weights' identity (family, source, SHA-256 of the weights), the model config it was built
    from, the test-time decoding (``family.evaluation``) and the task prompt."""
    tensors, peft_config = policy.export_tensors(family, policy.trainable, prompt)
    spec = family.spec
    base_model: Mapping[str, Any] = {
        "name": model_name,
        "family": family.name,
        "weights": dict(family.identity),
    }
    extra = {
        "task": task,
        "policy": policy.name,
        "family": family_record(family, family.evaluation),
        **prompt_fields(prompt, (spec.tokenizer if spec is not None else None) or "processor"),
    }
    return save_export(out_dir, mode or policy.name, tensors, base_model, extra, peft_config)
