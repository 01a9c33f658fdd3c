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

What a mode exports and how it is applied is its policy's (``ModePolicy.export_tensors`` and
``apply_export``, adapt.train.modes); the metadata records the policy class (``policy``) so an
export of a mode defined outside adapt loads too. Exports without it are applied by the policy of
``conf/mode/<mode>.yaml``.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from adapt.atomic import atomic_path, write_text
from adapt.model import GLIP, GLIPConfig, TextFeatures
from adapt.prompt import EncodedPrompt

if TYPE_CHECKING:
    from adapt.train.modes import ModePolicy

CONFIG_FILE = "adapter_config.json"
TENSORS_FILE = "adapter_model.safetensors"
ADAPT_FILE = "adapt_export.json"  # adapt's metadata of a LoRA export (adapter_config.json is peft's)
FORMAT = "adapt-export"
FORMAT_VERSION = 2
PEFT_PREFIX = "base_model.model."  # what PeftModel.save_pretrained puts before module names
PEFT_ADAPTER = "default"
# A single entry: safetensors writes its metadata map in a per-process random order, so two entries
# would give identical weights different bytes. "pt" is what peft and transformers write.
SAFETENSORS_METADATA = {"format": "pt"}


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


def file_sha256(path: str | os.PathLike[str]) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


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

    def policy(self) -> ModePolicy:
        """The policy that applies this export: the recorded class, else the mode's configured one."""
        from adapt.train.modes import build_policy

        mode_cfg: dict[str, Any] = {"name": self.mode}
        if self.config.get("policy"):
            mode_cfg["policy"] = {"_target_": self.config["policy"]}
        try:
            return build_policy(mode_cfg)
        except ValueError as exc:
            raise ExportError(f"{self.metadata_file}: {exc}") from exc

    @property
    def version(self) -> int:
        return int(self.config.get("version", 1))

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

    def glip_config(self, model_arch: Mapping[str, Any] | None = None) -> GLIPConfig:
        """The architecture to build, with the run's test-time input sizes and inference settings.

        ``model_arch`` (another model config's ``arch``) replaces the recorded architecture but not
        the recorded ``input`` and ``inference`` sections; a format-1 export recorded neither, so its
        model config's defaults apply (with a warning: detections may differ from the run's).
        """
        recorded = self.config.get("arch")
        if model_arch is None and recorded is None:
            raise ExportError(
                f"{self.metadata_file}: records no architecture; name the model it was trained on"
            )
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

    def base_weights(
        self,
        checkpoint: str | os.PathLike[str] | None = None,
        model_cfg: Mapping[str, Any] | None = None,
        download: bool = False,
    ) -> Path | None:
        """The weights file this export was trained on, checked by SHA-256 (None: the seeded random init).

        ``checkpoint`` is the user's file; without one, the model config's official checkpoint is
        taken through :func:`adapt.download.require_checkpoint` when it is the recorded file. Any
        other weights stop here with the hash they should have: a prompt trained on top of one
        checkpoint means nothing on another.
        """
        ck, where = self.checkpoint, self.metadata_file
        if not ck:
            raise ExportError(
                f"{where}: records no base weights (base_model.checkpoint), so it cannot be checked"
            )
        want, file = ck.get("sha256"), ck.get("file")
        if file is None:
            if checkpoint is not None:
                raise ExportError(
                    f"{where}: trained on {self.base_name}'s random init (seed "
                    f"{ck.get('random_init_seed')}), not on {checkpoint}; drop the checkpoint to use the "
                    "weights it was trained on"
                )
            return None
        if checkpoint is None:
            official = (model_cfg or {}).get("checkpoint") or {}
            # Exports record the file's name; a packaged checkpoint's config names "package:<path>".
            if Path(str(official.get("file"))).name != file:
                raise ExportError(
                    f"{where}: trained on checkpoint {file} (sha256 {want}), which is not {self.base_name}'s "
                    "official one; pass that file as --checkpoint (Detector.from_export(..., checkpoint=...))"
                )
            from adapt.download import require_checkpoint

            checkpoint = require_checkpoint(model_cfg, download=download)  # type: ignore[arg-type]
            assert checkpoint is not None
        path = Path(checkpoint)
        if not path.is_file():
            raise ExportError(f"{path}: checkpoint file not found (the export needs {file}, sha256 {want})")
        got = file_sha256(path)
        if want is not None and got != want:
            raise ExportError(
                f"{path}: SHA-256 {got} is not the base weights' the export was trained on "
                f"({file}, sha256 {want}); detections with other weights would be meaningless"
            )
        return path

    # -- applying --------------------------------------------------------------------------------

    def text_features(self, batch_size: int = 1, device: torch.device | str | None = None) -> TextFeatures:
        """The prompt's text features, ready for ``GLIP.forward(text=...)``: no BERT involved.

        The offset is already inside, so the model must not add its own ``prompt_offset`` again.
        """
        if "prompt.hidden" not in self.tensors:
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
                f"{self.metadata_file}: trained on {self.base_name} (arch {want}); "
                f"this model's architecture digest is {config_digest(model.cfg)}"
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

    def apply(self, model: GLIP) -> GLIP:
        """Load the trained tensors onto ``model`` the way the export's mode does (LoRA: adapters first)."""
        self.check_model(model)
        return self.policy().apply_export(self, model)

    def apply_peft(self, model: GLIP) -> GLIP:
        """peft's own loader: inject the recorded LoraConfig, then set the adapter state dict."""
        from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

        inject_adapter_in_model(
            LoraConfig.from_pretrained(str(self.folder)), model, adapter_name=PEFT_ADAPTER
        )
        try:
            result = set_peft_model_state_dict(model, self.tensors, adapter_name=PEFT_ADAPTER)
        except RuntimeError as exc:  # load_state_dict's size mismatches
            first = str(exc).strip().splitlines()[-1].strip()
            raise ExportError(f"{self.folder / TENSORS_FILE}: does not fit the model: {first}") from exc
        missing = [k for k in result.missing_keys if "lora_" in k]
        if result.unexpected_keys or missing:
            raise ExportError(
                f"{self.folder / TENSORS_FILE}: adapter tensors do not match the model "
                f"(unexpected {list(result.unexpected_keys)[:3]}, missing {missing[:3]})"
            )
        return model


def load_named_tensors(export: Export, model: GLIP, tensors: Mapping[str, Tensor]) -> GLIP:
    """Copy ``tensors`` (adapt parameter names) into ``model``; each mismatch names the file."""
    params = dict(model.named_parameters())
    where = export.folder / TENSORS_FILE
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
    ``adapter_config.json`` is peft's; adapt's metadata then goes to ``adapt_export.json``."""
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


def peft_files(model: GLIP, trainable: Mapping[str, Tensor]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """peft's adapter_config.json content and state dict, as ``PeftModel.save_pretrained`` writes them."""
    from peft import get_peft_model_state_dict

    peft_config = getattr(model, "peft_config", {}).get(PEFT_ADAPTER)
    if peft_config is None:
        raise ExportError("a lora export needs the model's peft adapters (adapt.train.modes.inject_lora)")
    config = peft_config.to_dict()
    # JSON has no sets; sorted lists keep the bytes stable. Saved adapters are for inference.
    config = {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}
    config["inference_mode"] = True
    config["peft_type"] = str(getattr(config["peft_type"], "value", config["peft_type"]))
    state = get_peft_model_state_dict(model, state_dict=dict(trainable), adapter_name=PEFT_ADAPTER)
    return config, {PEFT_PREFIX + k: v for k, v in state.items()}


@torch.no_grad()
def export_run(
    out_dir: str | os.PathLike[str],
    model: GLIP,
    mode: str | ModePolicy,
    trainable: Mapping[str, Tensor],
    prompt: EncodedPrompt,
    base_model: Mapping[str, Any],
    task: str | None = None,
) -> Path:
    """Export a trained run: the tensors ``mode``'s policy exports (a mode name: its configured policy).

    ``model.cfg`` must be the configuration the run tested with: its ``input`` and ``inference``
    sections are what reproduces the run's detections.
    """
    from adapt.train.modes import ModePolicy, build_policy, class_path

    policy = mode if isinstance(mode, ModePolicy) else build_policy({"name": mode})
    extra: dict[str, Any] = {
        "task": task,
        "policy": class_path(policy),
        "arch": model.cfg.to_dict(),
        **prompt_fields(prompt, model.cfg.language.tokenizer),
    }
    tensors, peft_config = policy.export_tensors(model, trainable, prompt)
    return save_export(out_dir, policy.name, tensors, base_model, extra, peft_config)


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
