"""What a training run leaves behind for reuse: a small two-file artifact, as peft saves adapters.

``<dir>/adapter_config.json`` says what the tensors are and which base model they belong to;
``<dir>/adapter_model.safetensors`` holds them. Per mode:

* ``prompt``: the learned prompt embeddings, i.e. the frozen BERT output of the task caption plus the
  trained offset (``prompt.hidden``, and ``prompt.embedded``, the pad-zeroed stream GLIP-T (A) dots
  with), the raw ``prompt_offset``, and the caption, tokenizer, token ids, attention mask, class
  names and class -> token map. Detection with it needs no text encoder at all (paper 5.2: "get
  prompt embeddings P0 from the language backbone, then discard the language backbone");
* ``linear``, ``lora`` and ``full``: the trained tensors under adapt names (for LoRA also the peft
  settings needed to re-inject the adapters).

Both files are written to temporary names and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from adapt.atomic import atomic_path, write_json
from adapt.model import GLIP, GLIPConfig, TextFeatures
from adapt.prompt import EncodedPrompt

CONFIG_FILE = "adapter_config.json"
TENSORS_FILE = "adapter_model.safetensors"
FORMAT = "adapt-export"
FORMAT_VERSION = 1


class ExportError(ValueError):
    """An artifact is unreadable or does not belong to the model it is loaded onto."""


# Settings that do not change what the weights mean: the resize rule, thresholds, loss weights,
# and the training-only knobs (frozen stages, regularisers, recomputation).
_NOT_ARCHITECTURE = ("input", "inference", "loss", "fpn")
_TRAINING_ONLY = {"swin": ("freeze_at", "drop_path_rate"), "head": ("use_checkpoint", "fusion_dropout")}


def config_digest(cfg: GLIPConfig) -> str:
    """A short digest of the architecture, so an artifact refuses a model of another shape."""
    arch = {k: v for k, v in cfg.to_dict().items() if k not in _NOT_ARCHITECTURE}
    for section, keys in _TRAINING_ONLY.items():
        arch[section] = {k: v for k, v in arch[section].items() if k not in keys}
    text = json.dumps(arch, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def model_identity(model: GLIP, name: str, checkpoint: Mapping[str, Any] | None) -> dict[str, Any]:
    """Which base model an artifact belongs to: name, checkpoint identity, architecture digest."""
    return {"name": name, "checkpoint": dict(checkpoint or {}), "arch_digest": config_digest(model.cfg)}


@dataclass
class Export:
    """A loaded artifact: its JSON config and its tensors."""

    config: dict[str, Any]
    tensors: dict[str, Tensor] = field(repr=False)

    @property
    def mode(self) -> str:
        return str(self.config["mode"])

    @property
    def class_names(self) -> list[str]:
        return list(self.config.get("class_names") or [])

    @property
    def label_to_tokens(self) -> dict[int, list[int]]:
        return {int(k): list(v) for k, v in (self.config.get("label_to_tokens") or {}).items()}

    def text_features(self, batch_size: int = 1, device: torch.device | str | None = None) -> TextFeatures:
        """The prompt's text features, ready for ``GLIP.forward(text=...)``: no BERT involved.

        The offset is already inside, so the model must not add its own ``prompt_offset`` again.
        """
        if self.mode != "prompt":
            raise ExportError(f"a {self.mode} artifact holds no prompt embeddings")
        hidden = self.tensors["prompt.hidden"].to(device)
        embedded = self.tensors["prompt.embedded"].to(device)
        mask = self.tensors["prompt.attention_mask"].to(device)
        return TextFeatures(
            hidden=hidden.expand(batch_size, -1, -1),
            mask=mask.expand(batch_size, -1),
            embedded=embedded.expand(batch_size, -1, -1),
        )

    def check_model(self, model: GLIP) -> None:
        """Refuse a base model whose architecture differs from the one the artifact was trained on."""
        want = self.config.get("base_model", {}).get("arch_digest")
        if want is not None and want != config_digest(model.cfg):
            raise ExportError(
                f"artifact trained on {self.config['base_model'].get('name')} (arch {want}); "
                f"this model's architecture digest is {config_digest(model.cfg)}"
            )

    def apply(self, model: GLIP) -> GLIP:
        """Load the trained tensors onto ``model`` (injecting LoRA adapters first)."""
        self.check_model(model)
        if self.mode == "prompt":
            model.enable_prompt_tuning()
            tensors = {"prompt_offset": self.tensors["prompt_offset"]}
        else:
            if self.mode == "lora":
                from adapt.train.modes import inject_lora

                inject_lora(model, self.config["lora"])
            tensors = {k: v for k, v in self.tensors.items() if not k.startswith("prompt.")}
        params = dict(model.named_parameters())
        unknown = sorted(set(tensors) - set(params))
        if unknown:
            raise ExportError(f"artifact tensors {unknown[:5]} are not parameters of the model")
        with torch.no_grad():
            for name, value in tensors.items():
                params[name].copy_(value.to(params[name].device, params[name].dtype))
        return model


def save_export(
    out_dir: str | os.PathLike[str],
    mode: str,
    tensors: Mapping[str, Tensor],
    base_model: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write the two files (tensors first: a config on disk always has its tensors)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(out / TENSORS_FILE) as tmp:
        save_file(data, tmp, metadata={"format": FORMAT, "mode": mode})
    config = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "mode": mode,
        "base_model": dict(base_model),
        "tensors": {k: list(v.shape) for k, v in data.items()},
        **dict(extra or {}),
    }
    write_json(config, out / CONFIG_FILE)
    return out


def prompt_fields(prompt: EncodedPrompt, tokenizer: str) -> dict[str, Any]:
    """The JSON side of a prompt artifact: everything that gives the embeddings their meaning."""
    return {
        "caption": prompt.caption,
        "tokenizer": tokenizer,
        "class_names": list(prompt.class_names),
        "labels": list(prompt.labels),
        "label_to_tokens": {str(k): list(v) for k, v in prompt.label_to_tokens.items()},
        "char_spans": [list(s) for s in prompt.char_spans],
        "input_ids": prompt.input_ids.tolist(),
        "attention_mask": prompt.attention_mask.tolist(),
    }


@torch.no_grad()
def export_run(
    out_dir: str | os.PathLike[str],
    model: GLIP,
    mode: str,
    trainable: Mapping[str, Tensor],
    prompt: EncodedPrompt,
    base_model: Mapping[str, Any],
    lora: Mapping[str, Any] | None = None,
    task: str | None = None,
) -> Path:
    """Export a trained run (see the module docstring for what each mode writes)."""
    extra: dict[str, Any] = {"task": task, **prompt_fields(prompt, model.cfg.language.tokenizer)}
    tensors = dict(trainable)
    if mode == "prompt":
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
    elif mode == "lora":
        extra["lora"] = dict(lora or {})
    return save_export(out_dir, mode, tensors, base_model, extra)


def load_export(path: str | os.PathLike[str]) -> Export:
    """Read an artifact folder (or its JSON or safetensors file)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    config_path, tensors_path = folder / CONFIG_FILE, folder / TENSORS_FILE
    if not config_path.is_file() or not tensors_path.is_file():
        raise ExportError(f"{folder}: not an adapt export (needs {CONFIG_FILE} and {TENSORS_FILE})")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"{config_path}: unreadable ({exc})") from exc
    if config.get("format") != FORMAT:
        raise ExportError(f"{config_path}: format {config.get('format')!r} is not {FORMAT!r}")
    return Export(config=config, tensors=load_file(str(tensors_path)))
