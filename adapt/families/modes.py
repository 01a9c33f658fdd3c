"""What each adaptation mode trains and runs in eval mode, for a detector family.

The same five modes as GLIP's (``adapt.modes``), with the family's own parameter groups
(``DetectorFamily.linear_modules``, ``lora_targets``, ``vision_modules``, ``text_encoder``; each
family's docstring says what its groups are and why):

=========  ============================================  ==============================================
mode       trains                                        eval mode (``DetectorFamily.eval_modules``)
=========  ============================================  ==============================================
zero       nothing                                       everything
prompt     ``prompt_offset.offset`` (added here)         everything (nothing stochastic)
linear     the family's ``linear_modules``               everything (the probe reads fixed features)
full       all but ``frozen_in_full`` (none here)        nothing (dropout, drop-path on)
lora       peft adapters on ``lora_targets`` (added)     the vision trunk and the text encoder
=========  ============================================  ==============================================

Names are the family's ``named_parameters()`` (``hf.`` + transformers' names, ``prompt_offset.offset``),
deduplicated as torch deduplicates tied weights (Grounding DINO's shared box head appears once, under
its first name). A mode policy calls :func:`prepare` and :func:`trains_parameter` where GLIP's
policies add their parameters and name their trainable set, and :func:`set_module_modes` after
every ``.train()``; :func:`apply_mode` does all three for a script or a test.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from adapt.families.base import DetectorFamily
from adapt.prompt import EncodedPrompt

MODES = ("zero", "prompt", "linear", "full", "lora")
HF = "hf."
OFFSET = "prompt_offset.offset"


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r} for a detector family; known: {list(MODES)}")


def prepare(
    family: DetectorFamily,
    mode: str,
    prompt: EncodedPrompt | None = None,
    lora: Mapping[str, Any] | None = None,
) -> None:
    """Add what the mode trains but the model lacks: the prompt offset (``prompt``; OWLv2 needs the
    task's prompt, one row per class) or the LoRA adapters (``lora``: ``r``, ``alpha``,
    ``dropout``, ``target_modules`` overriding the family's regex)."""
    check_mode(mode)
    if mode == "prompt":
        family.enable_prompt_tuning(prompt)
    elif mode == "lora":
        inject_lora(family, lora or {})


def parameter_names(family: DetectorFamily, paths: tuple[str, ...]) -> set[str]:
    """Names of the parameters at or under ``paths`` (modules or parameters of ``family.hf``),
    tied copies included once, under the name ``named_parameters`` gives them."""
    ids: set[int] = set()
    for path in paths:
        try:
            ids.update(id(p) for p in family.hf.get_submodule(path).parameters())
        except AttributeError:
            ids.add(id(family.hf.get_parameter(path)))
    return {name for name, p in family.named_parameters() if id(p) in ids}


def mode_group(family: DetectorFamily, mode: str) -> set[str]:
    """The names a mode's rule reads: what ``linear`` trains (``linear_modules``), what ``full``
    leaves frozen (``frozen_in_full``); empty for the other modes."""
    if mode == "linear":
        return parameter_names(family, family.linear_modules)
    if mode == "full":
        return parameter_names(family, family.frozen_in_full)
    return set()


def trains_parameter(family: DetectorFamily, mode: str, name: str, group: set[str] | None = None) -> bool:
    """Whether ``name`` (a ``family.named_parameters()`` name) trains in ``mode`` (after :func:`prepare`).

    ``group``: :func:`mode_group`, passed in when asking about many names."""
    check_mode(mode)
    if mode == "zero":
        return False
    if mode == "prompt":
        return name == OFFSET
    if mode == "lora":
        return "lora_" in name
    group = group if group is not None else mode_group(family, mode)
    if mode == "linear":
        return name in group
    return name != OFFSET and name not in group  # full


def set_module_modes(family: DetectorFamily, mode: str) -> None:
    """Re-apply the mode's eval-mode modules (``family.eval_modules``; call after ``.train()``)."""
    check_mode(mode)
    if not family.training:
        return
    for path in family.eval_modules(mode):
        try:
            module = family.get_submodule(path)
        except AttributeError:
            continue  # a text encoder a prompt export replaced
        if module is not None:
            module.eval()


def apply_mode(
    family: DetectorFamily,
    mode: str,
    prompt: EncodedPrompt | None = None,
    lora: Mapping[str, Any] | None = None,
) -> list[str]:
    """Prepare, set ``requires_grad`` to the mode's set, put the frozen parts in eval mode.

    Returns the trainable names in ``named_parameters`` order."""
    prepare(family, mode, prompt, lora)
    group = mode_group(family, mode)
    family.requires_grad_(False)
    for name, param in family.named_parameters():
        param.requires_grad_(trains_parameter(family, mode, name, group))
    set_module_modes(family, mode)
    return [n for n, p in family.named_parameters() if p.requires_grad]


def inject_lora(family: DetectorFamily, lora: Mapping[str, Any]) -> None:
    """peft LoRA adapters on the linears of the transformers model that ``target_modules`` (a regex
    over transformers' module names, default the family's ``lora_targets``) full-matches.

    peft injects through the family, not the transformers model itself: transformers' Grounding DINO
    declares tied weights and ``tie_word_embeddings`` without an input embedding, which stops peft's
    tied-embedding check. The adapters still sit in transformers' modules, under transformers' names
    (``hf.`` first); exports drop that prefix, so peft's own tooling loads them onto the plain
    transformers model. Idempotent: a model that already carries adapters is left as it is."""
    from peft import LoraConfig, inject_adapter_in_model

    if any("lora_" in n for n, _ in family.hf.named_parameters()):
        return
    target = lora.get("target_modules") or family.lora_targets
    targets = target if isinstance(target, str) else "|".join(re.escape(t) for t in target)

    def config(modules: str) -> LoraConfig:
        return LoraConfig(
            r=int(lora.get("r", 8)),
            lora_alpha=int(lora.get("alpha", 16)),
            lora_dropout=float(lora.get("dropout", 0.0)),
            target_modules=modules,
            bias="none",
        )

    inject_adapter_in_model(config(rf"{re.escape(HF)}(?:{targets})"), family)
    if not any("lora_" in n for n, _ in family.hf.named_parameters()):
        raise ValueError(f"lora target_modules={target!r} matched no linear layer of {family.name}")
    # What an export records: the same adapters as peft sees them on the transformers model.
    family.lora_config = config(targets)
