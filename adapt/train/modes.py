"""Adaptation modes: one policy class per mode, named by its YAML.

A mode is everything that differs between adaptation methods, in one :class:`ModePolicy`
subclass: which parameters train (adding new ones first, as prompt tuning and LoRA do), which
modules run in eval mode, what the run exports and how that export goes back onto a model, its
report label and whether it trains at all. ``conf/mode/<name>.yaml`` selects the class with a
Hydra-style ``policy: {_target_: <module>.<Class>}`` node, so a new adaptation method is one class
plus one YAML file and nothing here changes.

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

import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import yaml
from torch import Tensor, nn

from adapt.model import GLIP, TextFeatures
from adapt.model.fusion import VLFuse
from adapt.prompt import MAX_QUERY_LEN, CaptionPrompt, EncodedPrompt, encode_prompt

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

    from adapt.detector import Detector
    from adapt.train.export import Export

MODE_DIR = Path(__file__).resolve().parents[1] / "conf" / "mode"
FROZEN_TRUNK = ("backbone", "language_backbone")

# Official linear_prob whitelist (``finetune.train()``): rpn params whose name contains one of these.
# ``cls_logits`` is whitelisted officially too but frozen in the constructor, so it never trains.
LINEAR_PROBE_KEYS = (
    "bbox_pred",
    "centerness",
    "dot_product_projection_text",
    "log_scale",
    "bias_lang",
    "bias0",
)


class ModePolicy:
    """One adaptation mode. Subclasses set the class attributes and :meth:`trains_parameter`.

    ``eval_modules`` are put in eval mode after every ``.train()``; ``label`` titles the mode's
    table in the report; ``trains`` False means the job only evaluates (and exports nothing).
    """

    label: ClassVar[str] = ""
    trains: ClassVar[bool] = True
    eval_modules: ClassVar[tuple[str, ...]] = ()
    # The frozen tower's output is cached per training view (adapt.train.feature_cache).
    cache_tower: bool = False

    def __init__(self, name: str) -> None:
        self.name = name
        self._trainable: list[str] = []

    @classmethod
    def from_config(cls, mode_cfg: Mapping[str, Any]) -> ModePolicy:
        """The policy for ``conf/mode/<name>.yaml``: its name plus the ``policy`` node's other keys
        as keyword arguments, as Hydra's ``instantiate`` would pass them (subclasses may read more
        of the mode's YAML, as LoRA reads ``mode.lora``)."""
        return cls(str(mode_cfg["name"]), **policy_kwargs(mode_cfg))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    @property
    def title(self) -> str:
        return self.label or self.name

    @property
    def exports(self) -> bool:
        """Whether a run leaves an export (training modes; an evaluation-only mode may have one too)."""
        return self.trains

    # -- the task's prompt and detection ---------------------------------------------------------

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
        """Evaluation detections of a batch given the task prompt's text features (an ensemble of
        prompts detects differently)."""
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
        from adapt.train.export import load_named_tensors

        self.prepare(model)
        return load_named_tensors(
            export, model, {k: v for k, v in export.tensors.items() if not k.startswith("prompt.")}
        )

    def attach_export(self, export: Export, detector: Detector) -> None:
        """Make ``detector`` the run's: the trained tensors on its model, the run's caption by default."""
        export.apply(detector.model)
        detector.default_prompt = export.encoded_prompt()


class ZeroShot(ModePolicy):
    """The pretrained model as it is; nothing trains, everything runs in eval mode."""

    label = "zero-shot"
    trains = False
    eval_modules = (*FROZEN_TRUNK, "head")

    def trains_parameter(self, name: str, model: GLIP) -> bool:
        return False


class PromptTuning(ModePolicy):
    """GLIP prompt tuning: only the zero-initialised ``prompt_offset`` trains; all else is frozen."""

    label = "prompt tuning"
    eval_modules = (*FROZEN_TRUNK, "head")

    def prepare(self, model: GLIP) -> None:
        model.enable_prompt_tuning()

    def trains_parameter(self, name: str, model: GLIP) -> bool:
        return name == "prompt_offset"

    @torch.no_grad()
    def export_tensors(
        self, model: GLIP, trainable: Mapping[str, Tensor], prompt: EncodedPrompt
    ) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
        """The learned prompt embeddings (frozen BERT output plus the offset) and the raw offset,
        so detection needs no text encoder (paper 5.2)."""
        bert = model.language_backbone
        was_training = bert.training
        bert.eval()
        device = next(model.parameters()).device
        text = model.encode_text(prompt.input_ids[None].to(device), prompt.attention_mask[None].to(device))
        bert.train(was_training)
        offset = trainable["prompt_offset"]
        text = text.with_offset(offset.to(text.hidden.device))
        assert text.embedded is not None
        tensors = {
            "prompt.hidden": text.hidden,
            "prompt.embedded": text.embedded,
            "prompt.attention_mask": prompt.attention_mask[None],
            "prompt.input_ids": prompt.input_ids[None],
            "prompt_offset": offset,
        }
        return tensors, None

    def apply_export(self, export: Export, model: GLIP) -> GLIP:
        from adapt.train.export import load_named_tensors

        self.prepare(model)
        return load_named_tensors(export, model, {"prompt_offset": export.tensors["prompt_offset"]})

    def attach_export(self, export: Export, detector: Detector) -> None:
        """The stored embeddings replace the text encoder, which is dropped."""
        detector.model.language_backbone = None  # type: ignore[assignment]
        detector.prompt = export


class LinearProbe(ModePolicy):
    """Official linear_prob: box regression, centerness, text projection, log_scale and biases."""

    label = "linear probing"
    eval_modules = FROZEN_TRUNK

    def __init__(self, name: str, cache_tower: bool = False) -> None:
        super().__init__(name)
        if cache_tower:
            # Not the official probe (its frozen tower keeps dropout on): a deterministic tower
            # whose output adapt.train.feature_cache keeps per training view (mode=linear_cached).
            self.cache_tower = True
            self.eval_modules = (*FROZEN_TRUNK, "head.dyhead_tower")
            self.label = "linear probing (cached tower)"

    def prepare(self, model: GLIP) -> None:
        # Official linear_prob sets DYHEAD.USE_CHECKPOINT False: nothing in the tower needs
        # gradients, so recomputing it in backward would only cost time.
        for module in model.modules():
            if isinstance(module, VLFuse):
                module.checkpoint_policy = module.use_checkpoint = False

    def trains_parameter(self, name: str, model: GLIP) -> bool:
        return name.startswith("head.") and any(key in name for key in LINEAR_PROBE_KEYS)


class FullFineTuning(ModePolicy):
    """Everything but the frozen Swin stages and the unused class-logit head; dropout stays on."""

    label = "full-model fine-tuning"
    eval_modules = ()

    def trains_parameter(self, name: str, model: GLIP) -> bool:
        return not name.startswith("head.cls_logits.") and name not in _frozen_backbone_names(model)

    def set_module_modes(self, model: GLIP) -> None:
        super().set_module_modes(model)
        if model.training:
            # The frozen Swin stages; SwinBody.train() does this too, kept here so the policy
            # alone states every mode's module modes.
            for module in model.backbone.body.frozen_modules():
                module.eval()


class LoRA(ModePolicy):
    """peft LoRA adapters (``mode.lora``); only the adapters train. Beyond the paper, the head is
    treated like full fine-tuning (dropout on), backbone and BERT like linear probing."""

    label = "LoRA"
    eval_modules = FROZEN_TRUNK

    def __init__(self, name: str, lora: Mapping[str, Any] | None = None) -> None:
        super().__init__(name)
        self.lora = dict(lora or {})

    @classmethod
    def from_config(cls, mode_cfg: Mapping[str, Any]) -> ModePolicy:
        return cls(str(mode_cfg["name"]), lora=dict(mode_cfg.get("lora") or {}), **policy_kwargs(mode_cfg))

    def prepare(self, model: GLIP) -> None:
        inject_lora(model, self.lora)

    def trains_parameter(self, name: str, model: GLIP) -> bool:
        return "lora_" in name

    def export_tensors(
        self, model: GLIP, trainable: Mapping[str, Tensor], prompt: EncodedPrompt
    ) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
        """peft's own format: ``LoraConfig.to_dict()`` and ``get_peft_model_state_dict()``."""
        from adapt.train.export import peft_files

        config, tensors = peft_files(model, trainable)
        return tensors, config

    def apply_export(self, export: Export, model: GLIP) -> GLIP:
        if export.peft_config is not None:
            return export.apply_peft(model)
        from adapt.train.export import load_named_tensors

        inject_lora(model, export.config["lora"])  # format 1: adapt names and adapt's LoRA settings
        return load_named_tensors(export, model, dict(export.tensors))


def _frozen_backbone_names(model: GLIP) -> set[str]:
    """Parameter names of the Swin stages frozen by ``freeze_at`` (official FREEZE_CONV_BODY_AT)."""
    frozen: set[str] = set()
    prefix = "backbone.body."
    for module in model.backbone.body.frozen_modules():
        for name, _ in _named_under(model.backbone.body, module):
            frozen.add(prefix + name)
    return frozen


def _named_under(root: nn.Module, module: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    ids = {id(p) for p in module.parameters()}
    for name, param in root.named_parameters():
        if id(param) in ids:
            yield name, param


def inject_lora(model: GLIP, lora_cfg: Mapping[str, Any]) -> None:
    """Add peft LoRA adapters to the linear layers matched by ``target_modules`` (a regex).

    Only adapter weights train; the base layers stay frozen. Idempotent: a model that already
    carries adapters is left as it is (resume and export load into the same structure).
    """
    from peft import LoraConfig, inject_adapter_in_model

    if any("lora_" in n for n, _ in model.named_parameters()):
        return
    target = lora_cfg.get("target_modules")
    if not target:
        raise ValueError("mode=lora needs mode.lora.target_modules (a regex or a list of module names)")
    if not isinstance(target, str):
        target = list(target)
    config = LoraConfig(
        r=int(lora_cfg.get("r", 8)),
        lora_alpha=int(lora_cfg.get("alpha", 16)),
        lora_dropout=float(lora_cfg.get("dropout", 0.0)),
        target_modules=target,
        bias="none",
    )
    inject_adapter_in_model(config, model)
    if not any("lora_" in n for n, _ in model.named_parameters()):
        raise ValueError(f"mode.lora.target_modules={target!r} matched no linear layer of the model")


def lora_target_names(model: nn.Module, pattern: str) -> list[str]:
    """Module names a LoRA regex selects (peft full-matches string patterns)."""
    regex = re.compile(pattern)
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and regex.fullmatch(n)]


def mode_names() -> list[str]:
    """The modes ``conf/mode/`` defines."""
    return sorted(p.stem for p in MODE_DIR.glob("*.yaml"))


def _mode_yaml(name: str) -> dict[str, Any]:
    path = MODE_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown mode {name!r}: no {path} (known: {', '.join(mode_names())})")
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def policy_class(mode_cfg: Mapping[str, Any]) -> type[ModePolicy]:
    """The class the mode's ``policy._target_`` names; a config without one (a test's
    ``{"name": "prompt"}``, an export written before policies were recorded) takes the target of
    ``conf/mode/<name>.yaml``."""
    from hydra.utils import get_class

    policy = mode_cfg.get("policy")
    if policy is None:
        policy = _mode_yaml(str(mode_cfg["name"])).get("policy")
    target = policy.get("_target_") if isinstance(policy, Mapping) else policy
    where = f"mode {mode_cfg.get('name')!r}"
    if not target:
        raise ValueError(f"{where}: mode.policy._target_ must name a ModePolicy class")
    try:
        cls = get_class(str(target))
    except Exception as exc:  # hydra wraps the ImportError/AttributeError
        raise ValueError(f"{where}: mode.policy._target_={target!r} cannot be imported ({exc})") from exc
    if not (isinstance(cls, type) and issubclass(cls, ModePolicy)):
        raise ValueError(f"{where}: mode.policy._target_={target!r} is not a ModePolicy subclass")
    return cls


def policy_kwargs(mode_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The ``policy`` node's settings besides ``_target_`` (plain containers)."""
    policy = mode_cfg.get("policy")
    if not isinstance(policy, Mapping):
        return {}
    from omegaconf import DictConfig, OmegaConf

    node = OmegaConf.to_container(policy, resolve=True) if isinstance(policy, DictConfig) else dict(policy)
    return {str(k): v for k, v in node.items() if k != "_target_"}  # type: ignore[union-attr]


def build_policy(mode_cfg: Mapping[str, Any]) -> ModePolicy:
    """The policy of ``conf/mode/<name>.yaml`` (its ``policy._target_`` class, see :func:`policy_class`)."""
    return policy_class(mode_cfg).from_config(mode_cfg)


def class_path(policy: ModePolicy) -> str:
    """What a ``_target_`` names to get this policy's class back."""
    cls = type(policy)
    return f"{cls.__module__}.{cls.__qualname__}"


def mode_label(name: str) -> str:
    """A configured mode's report label (its own name when ``conf/mode/`` does not define it)."""
    if not (MODE_DIR / f"{name}.yaml").is_file():
        return name
    return policy_class({"name": name}).label or name


def module_training_flags(model: GLIP) -> dict[str, bool]:
    """The module flags the oracle fixture lists (``requires_grad_modes.json``), in adapt names."""
    return {
        "backbone.body": model.backbone.body.training,
        "backbone.fpn": model.backbone.fpn.training,
        "language_backbone": model.language_backbone.training,
        "rpn.head": model.head.training,
    }
