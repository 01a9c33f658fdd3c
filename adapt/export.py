"""What a training run leaves behind for reuse: its trained tensors, tied to the exact base weights.

An export folder (``<run>/export``) reproduces the run's test detections anywhere: besides the
tensors it records the base weights they were trained on (checkpoint file name and SHA-256, or the
seed of an untrained model's random init), the whole architecture with the run's test-time input
sizes (``arch.input``) and inference settings (``arch.inference``), and the task caption. Layout
per mode:

* ``prompt``, ``linear``, ``full``: two files. ``adapter_config.json`` holds adapt's metadata,
  ``adapter_model.safetensors`` the tensors under adapt names. A prompt export stores the learned
  prompt embeddings (the frozen BERT output of the caption plus the trained offset: ``prompt.hidden``
  and ``prompt.embedded``, the pad-zeroed stream GLIP-T (A) dots with) and the raw ``prompt_offset``,
  so detection needs no text encoder at all (paper 5.2: "get prompt embeddings P0 from the language
  backbone, then discard the language backbone");
* ``lora``: peft's own format, so peft tooling loads it onto an adapt GLIP
  (``PeftModel.from_pretrained`` or ``inject_adapter_in_model`` + ``set_peft_model_state_dict``):
  ``adapter_config.json`` is ``LoraConfig.to_dict()``, ``adapter_model.safetensors`` is
  ``get_peft_model_state_dict()`` under peft's ``base_model.model.`` prefix; adapt's metadata goes
  to a third file, ``adapt_export.json``.

Files are byte-reproducible (sorted JSON keys, one fixed safetensors metadata entry), so identical
weights give identical hashes; each file is written to a temporary name and renamed into place,
tensors first (a config on disk always has its tensors).

This module is the format only: reading, writing and identifying files. What a mode exports and
how it is applied is its policy's (``ModePolicy.export_tensors`` and ``apply_export``,
:mod:`adapt.modes`); the metadata records the policy by its registered *name* (``policy``), which
:func:`adapt.modes.policy_class` resolves without importing anything the file names. Exports of
format 2 recorded a built-in class path there; those map to their names. Where the base weights come
from (the HF cache, a download) is the detector's business: an export only says which file, by hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from adapt.atomic import atomic_path, write_text
from adapt.digest import file_sha256
from adapt.model import GLIP, GLIPConfig
from adapt.prompt import PACKAGED_TOKENIZERS, EncodedPrompt

CONFIG_FILE = "adapter_config.json"
TENSORS_FILE = "adapter_model.safetensors"
ADAPT_FILE = "adapt_export.json"  # adapt's metadata of a LoRA export (adapter_config.json is peft's)
FORMAT = "adapt-export"
FORMAT_VERSION = 3  # 3: the policy recorded by registered name (2: by class path)
PEFT_PREFIX = "base_model.model."  # what PeftModel.save_pretrained puts before module names
PEFT_ADAPTER = "default"
# A single entry: safetensors writes its metadata map in a per-process random order, so two entries
# would give identical weights different bytes. "pt" is what peft and transformers write.
SAFETENSORS_METADATA = {"format": "pt"}


# Format-1 exports recorded only the mode; ``linear_cached`` is the linear probe's cached variant.
LEGACY_MODE_POLICIES = {"linear_cached": "linear"}


class ExportError(ValueError):
    """An artifact is unreadable or does not belong to the model or weights it is loaded onto."""


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


def checkpoint_identity(path: str | os.PathLike[str] | None, random_init_seed: int = 0) -> dict[str, Any]:
    """The base weights as an export records them: file name and SHA-256, or the random-init seed."""
    if path is None:
        return {"file": None, "sha256": None, "random_init_seed": int(random_init_seed)}
    return {"file": Path(path).name, "sha256": file_sha256(path)}


def model_identity(model: GLIP, name: str, checkpoint: Mapping[str, Any] | None) -> dict[str, Any]:
    """Which base model an artifact belongs to: name, checkpoint identity, architecture digest.

    ``checkpoint`` is :func:`checkpoint_identity`'s record (``None``: the seeded random init).
    """
    ident = dict(checkpoint) if checkpoint else checkpoint_identity(None)
    return {"name": name, "checkpoint": ident, "arch_digest": config_digest(model.cfg)}


def _json_bytes(obj: Any) -> str:
    """Sorted keys and a fixed layout: the same content always gives the same bytes."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


@dataclass
class Export:
    """A loaded artifact: adapt's metadata, its tensors and (LoRA) peft's adapter config."""

    config: dict[str, Any]
    tensors: dict[str, Tensor] = field(repr=False)
    folder: Path = Path(".")
    peft_config: dict[str, Any] | None = None

    @property
    def mode(self) -> str:
        return str(self.config["mode"])

    @property
    def policy_name(self) -> str:
        """The registered name of the policy that applies this export.

        Format 3 records it (``policy``); format 2 recorded a built-in class path there, which
        :mod:`adapt.modes.registry` maps to its name; format 1 recorded only the mode, which is the
        policy's name (``linear_cached`` was the linear probe's cached variant).
        """
        recorded = self.config.get("policy")
        if recorded is None:
            return LEGACY_MODE_POLICIES.get(self.mode, self.mode)
        if not isinstance(recorded, str) or not recorded:
            raise ExportError(f"{self.metadata_file}: 'policy' must be a mode name, got {recorded!r}")
        return recorded

    @property
    def version(self) -> int:
        return int(self.config.get("version", 1))

    @property
    def tensors_file(self) -> Path:
        return self.folder / TENSORS_FILE

    @property
    def metadata_file(self) -> Path:
        return self.folder / (ADAPT_FILE if self.peft_config is not None else CONFIG_FILE)

    @property
    def base_name(self) -> str:
        return str(self.config["base_model"]["name"])

    @property
    def class_names(self) -> list[str]:
        return list(self.config.get("class_names") or [])

    @property
    def eval_batch_size(self) -> int | None:
        """The run's evaluation batch size (images per forward pass per process), where recorded."""
        value = self.config.get("eval_batch_size")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ExportError(
                f"{self.metadata_file}: 'eval_batch_size' must be a positive integer, got {value!r}"
            )
        return value

    @property
    def mode_label(self) -> str:
        """What produced the export, as the report titles it ("linear probing (cached tower)");
        exports written before it was recorded give their mode name."""
        return str(self.config.get("mode_label") or self.mode)

    @property
    def label_to_tokens(self) -> dict[int, list[int]]:
        return {int(k): list(v) for k, v in (self.config.get("label_to_tokens") or {}).items()}

    def encoded_prompt(self) -> EncodedPrompt:
        """The run's own tokenised caption (the text a linear, LoRA or full export was trained with)."""
        c = self.config
        return EncodedPrompt(
            caption=str(c["caption"]),
            class_names=self.class_names,
            labels=[int(v) for v in c["labels"]],
            input_ids=torch.tensor(c["input_ids"], dtype=torch.long),
            attention_mask=torch.tensor(c["attention_mask"], dtype=torch.long),
            label_to_tokens=self.label_to_tokens,
            char_spans=[(int(a), int(b)) for a, b in c.get("char_spans") or []],
        )

    def glip_config(
        self, model_arch: Mapping[str, Any] | None = None, tokenizer: str | os.PathLike[str] | None = None
    ) -> GLIPConfig:
        """The architecture to build, with the run's test-time input sizes and inference settings.

        ``model_arch`` (another model config's ``arch``) replaces the recorded architecture but not
        the recorded ``input`` and ``inference`` sections; a format-1 export recorded neither, so its
        model config's defaults apply (with a warning: detections may differ from the run's).
        The tokenizer is one adapt ships, or ``tokenizer``, a folder the user passes: never a
        folder the file names.
        """
        recorded = self.config.get("arch")
        if model_arch is None and recorded is None:
            raise ExportError(
                f"{self.metadata_file}: records no architecture; name the model it was trained on"
            )
        if recorded is not None and not isinstance(recorded, Mapping):
            raise ExportError(f"{self.metadata_file}: 'arch' must be an object")
        arch = dict(model_arch if model_arch is not None else recorded)  # type: ignore[arg-type]
        if recorded is not None:
            arch["input"], arch["inference"] = recorded["input"], recorded["inference"]
        else:
            warnings.warn(
                f"{self.metadata_file}: a format-{self.version} export records no test-time input sizes or "
                "inference settings; the model config's defaults are used, so detections may differ "
                "from the run's",
                UserWarning,
                stacklevel=2,
            )
        language = dict(arch.get("language") or {})
        if tokenizer is not None:
            language["tokenizer"] = str(tokenizer)
        else:
            named = str(language.get("tokenizer", "bert-base-uncased"))
            if named not in PACKAGED_TOKENIZERS:
                raise ExportError(
                    f"{self.metadata_file}: records tokenizer {named!r}, which adapt does not ship "
                    f"(shipped: {', '.join(PACKAGED_TOKENIZERS)}); pass the tokenizer folder yourself "
                    "(--tokenizer DIR, Detector.from_export(..., tokenizer=DIR))"
                )
        arch["language"] = language
        return GLIPConfig.from_dict(arch)

    # -- base weights ----------------------------------------------------------------------------

    @property
    def checkpoint(self) -> dict[str, Any]:
        return dict(self.config["base_model"].get("checkpoint") or {})

    @property
    def random_init_seed(self) -> int | None:
        """The seed of the base weights' random init (an untrained model), else None."""
        ck = self.checkpoint
        return int(ck["random_init_seed"]) if ck.get("file") is None and "random_init_seed" in ck else None

    def verify_weights(self, path: str | os.PathLike[str]) -> Path:
        """``path`` if it holds the base weights this export was trained on (SHA-256), else ExportError.

        A prompt trained on top of one checkpoint means nothing on another.
        """
        ck, where = self.checkpoint, self.metadata_file
        want, file = ck.get("sha256"), ck.get("file")
        if file is None:
            raise ExportError(
                f"{where}: trained on {self.base_name}'s random init (seed {ck.get('random_init_seed')}), "
                f"not on {path}; drop the checkpoint to use the weights it was trained on"
            )
        path = Path(path)
        if not path.is_file():
            raise ExportError(f"{path}: checkpoint file not found (the export needs {file}, sha256 {want})")
        got = file_sha256(path)
        if want is not None and got != want:
            raise ExportError(
                f"{path}: SHA-256 {got} is not the base weights' the export was trained on "
                f"({file}, sha256 {want}); detections with other weights would be meaningless"
            )
        return path

    def check_model(self, model: GLIP) -> None:
        """Refuse a base model whose architecture differs from the one the artifact was trained on.

        Where the tokenizer was read from (a user's folder instead of the recorded name) is not
        architecture, so the digest is taken with the recorded tokenizer name.
        """
        want = self.config.get("base_model", {}).get("arch_digest")
        recorded = ((self.config.get("arch") or {}).get("language") or {}).get("tokenizer")
        cfg = model.cfg if recorded is None else model.cfg.with_tokenizer(str(recorded))
        if want is not None and want != config_digest(cfg):
            raise ExportError(
                f"{self.metadata_file}: trained on {self.base_name} (arch {want}); "
                f"this model's architecture digest is {config_digest(cfg)}"
            )
        if "prompt.hidden" in self.tensors:
            lang = model.cfg.language
            want_shape = [1, lang.max_query_len, lang.hidden_size]
            for name in ("prompt.hidden", "prompt.embedded"):
                if list(self.tensors[name].shape) != want_shape:
                    raise ExportError(
                        f"{self.folder / TENSORS_FILE}: tensor {name!r} has shape "
                        f"{list(self.tensors[name].shape)}, the model needs {want_shape}"
                    )


def _save_tensors(path: Path, tensors: Mapping[str, Tensor]) -> dict[str, list[int]]:
    data = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(data, tmp, metadata=SAFETENSORS_METADATA)
    return {k: list(v.shape) for k, v in sorted(data.items())}


def save_export(
    out_dir: str | os.PathLike[str],
    mode: str,
    tensors: Mapping[str, Tensor],
    base_model: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
    peft_config: Mapping[str, Any] | None = None,
) -> Path:
    """Write the files (tensors first). With ``peft_config`` the tensors are peft's state dict and
    ``adapter_config.json`` is peft's; adapt's metadata then goes to ``adapt_export.json``.

    ``mode`` is the run's mode (``linear_cached``, say); ``extra["policy"]`` the registered name of
    the policy that applies the export (``linear``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shapes = _save_tensors(out / TENSORS_FILE, tensors)
    config = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "mode": mode,
        "base_model": dict(base_model),
        "tensors": shapes,
        **dict(extra or {}),
    }
    if peft_config is not None:
        write_text(out / CONFIG_FILE, _json_bytes(peft_config))
        write_text(out / ADAPT_FILE, _json_bytes(config))
    else:
        (out / ADAPT_FILE).unlink(missing_ok=True)  # a LoRA export's leftover would shadow this one
        write_text(out / CONFIG_FILE, _json_bytes(config))
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


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"{path}: unreadable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ExportError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _read_tensors(path: Path, recorded: Mapping[str, Any] | None, where: Path) -> dict[str, Tensor]:
    """The safetensors file, checked against the shapes the export's JSON records."""
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own SafetensorError (and OSError) on damage
        raise ExportError(
            f"{path}: not a readable safetensors file ({exc}); it is truncated or damaged, "
            "copy the export again"
        ) from exc
    if recorded is None:
        return tensors
    missing, extra = sorted(set(recorded) - set(tensors)), sorted(set(tensors) - set(recorded))
    if missing or extra:
        raise ExportError(
            f"{path}: tensors differ from those {where.name} records "
            f"(missing {missing[:3]}, unexpected {extra[:3]})"
        )
    for name, shape in recorded.items():
        if list(tensors[name].shape) != list(shape):
            raise ExportError(
                f"{path}: tensor {name!r} has shape {list(tensors[name].shape)}, "
                f"but {where.name} records {list(shape)}"
            )
    return tensors


def load_export(path: str | os.PathLike[str]) -> Export:
    """Read an artifact folder (or one of its files); each damage is one error naming the file."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    config_path, tensors_path, adapt_path = folder / CONFIG_FILE, folder / TENSORS_FILE, folder / ADAPT_FILE
    if not config_path.is_file() or not tensors_path.is_file():
        raise ExportError(f"{folder}: not an adapt export (needs {CONFIG_FILE} and {TENSORS_FILE})")
    peft_config = None
    if adapt_path.is_file():  # LoRA in peft's format
        peft_config, meta_path = _read_json(config_path), adapt_path
    else:
        meta_path = config_path
    config = _read_json(meta_path)
    if config.get("format") != FORMAT:
        raise ExportError(f"{meta_path}: format {config.get('format')!r} is not {FORMAT!r}")
    version = config.get("version")
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise ExportError(
            f"{meta_path}: export format version {version!r} is not one this adapt reads "
            f"(1..{FORMAT_VERSION})"
        )
    tensors = _read_tensors(tensors_path, config.get("tensors"), meta_path)
    return Export(config=config, tensors=tensors, folder=folder, peft_config=peft_config)
