"""Build a family detector from its model config: random init, a hub repository or a local folder.

Weights go through transformers' ``from_pretrained`` only, so everything huggingface_hub honours
applies unchanged: the HF cache (``HF_HUB_CACHE``), a mirror (``HF_ENDPOINT``), a token
(``HF_TOKEN``), ``HF_HUB_OFFLINE=1`` (then only the cache is read). A local folder written by
``save_pretrained`` works the same way; its ``config.json`` defines the architecture and its
processor files the preprocessing. Received files are data: the family is chosen by adapt's config
(``family:``), the folder's ``model_type`` is only checked against it, the model and processor
classes are the family's own, and remote code is never run (``trust_remote_code=False``).

Every detector records where its weights came from and a SHA-256 of their values
(:func:`weights_digest`), which is how an export refuses other weights.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig
from transformers.utils.hub import cached_file, extract_commit_hash

from adapt.families.base import DetectorFamily
from adapt.families.registry import family_class, family_for_model_type
from adapt.families.spec import FamilyConfigError, FamilySpec, InferenceSettings, family_model_config
from adapt.families.tokenizers import shipped_tokenizer


class FamilyLoadError(RuntimeError):
    """Weights or processor files cannot be read, or do not belong to the configured family."""


def build_family(spec: FamilySpec | Mapping[str, Any] | str) -> DetectorFamily:
    """The detector a family model config describes (a spec, a config mapping, or the name of a
    shipped ``conf/model`` config), in eval mode, on the CPU."""
    if isinstance(spec, str):
        spec = family_model_config(spec)
    if not isinstance(spec, FamilySpec):
        spec = FamilySpec.from_config(spec)
    cls = family_class(spec.family)
    commit = None
    if spec.pretrained:
        hf, processor, commit = _pretrained(cls, spec)
    else:
        hf, processor = _random_init(cls, spec)
    family = cls(hf.eval(), processor, spec.inference)
    family.evaluation = spec.evaluation
    if spec.loss:
        family.set_loss_weights(spec.loss)
    family.identity = {
        "family": cls.name,
        "model": spec.name,
        "model_type": hf.config.model_type,
        "repo": spec.repo if spec.path is None else None,
        "revision": spec.revision,
        "commit": commit,
        "path": spec.path,
        "random_init_seed": None if spec.pretrained else spec.seed,
        "weights_sha256": weights_digest(hf),
    }
    return family.eval()


def family_from_folder(
    path: str | Path, inference: InferenceSettings | None = None, name: str | None = None
) -> DetectorFamily:
    """Any ``save_pretrained`` folder of a family's model (``--checkpoint DIR``): its config.json's
    ``model_type`` picks the family (a closed table), the folder defines everything else."""
    config_file = Path(path) / "config.json"
    try:
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError) as exc:
        raise FamilyLoadError(
            f"{config_file}: not a readable save_pretrained config ({_first_line(exc)})"
        ) from exc
    cls = family_for_model_type(str(model_type))
    settings = inference or InferenceSettings(threshold=cls.default_threshold)
    return build_family(
        FamilySpec(name=name or Path(path).name, family=cls.name, path=str(path), inference=settings)
    )


def _pretrained(cls: type[DetectorFamily], spec: FamilySpec) -> tuple[Any, Any, str | None]:
    """Model, processor and, for a hub repo, the commit its files came from."""
    source = spec.source
    assert source is not None
    where = f"model {spec.name!r}"
    if spec.path is not None and not (Path(spec.path) / "config.json").is_file():
        raise FamilyLoadError(
            f"{where}: weights.path={spec.path!r} is not a save_pretrained folder (no config.json)"
        )
    revision = spec.revision or "main"  # the default branch
    try:
        config = AutoConfig.from_pretrained(source, revision=revision, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise FamilyLoadError(f"{where}: cannot read the config of {source!r}: {_first_line(exc)}") from exc
    if config.model_type not in cls.model_types:
        raise FamilyLoadError(
            f"{where}: {source!r} holds a {config.model_type!r} model; family {cls.name!r} runs "
            f"{list(cls.model_types)}"
        )
    for key, value in spec.config.items():
        if not hasattr(config, key):
            raise FamilyConfigError(f"{where}: config.{key} is not a setting of {type(config).__name__}")
        setattr(config, key, value)
    try:
        loaded: Any = cls.model_class.from_pretrained(
            source, config=config, output_loading_info=True, revision=revision, trust_remote_code=False
        )
        hf, info = loaded
        processor = cls.processor_class.from_pretrained(source, revision=revision, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise FamilyLoadError(f"{where}: cannot load {source!r}: {_first_line(exc)}") from exc
    missing = list(info.get("missing_keys") or []) + [str(k) for k in info.get("mismatched_keys") or []]
    if missing:
        raise FamilyLoadError(
            f"{where}: {source!r} lacks weights for {len(missing)} tensors (e.g. {missing[:3]}); "
            "it is not a complete checkpoint of this architecture"
        )
    commit = None
    if spec.path is None:
        commit = extract_commit_hash(cached_file(source, "config.json", revision=revision), None)
    return hf, processor, commit


def _random_init(cls: type[DetectorFamily], spec: FamilySpec) -> tuple[Any, Any]:
    where = f"model {spec.name!r}"
    if spec.tokenizer is None:
        raise FamilyConfigError(f"{where}: a random-init model needs `tokenizer` (one adapt ships)")
    try:
        config = cls.config_class(**spec.config)
    except (TypeError, ValueError) as exc:
        raise FamilyConfigError(f"{where}: config: {_first_line(exc)}") from exc
    tokenizer = shipped_tokenizer(spec.tokenizer)
    vocab = int(config.text_config.vocab_size)
    if len(tokenizer) > vocab:
        raise FamilyConfigError(
            f"{where}: tokenizer {spec.tokenizer!r} has {len(tokenizer)} tokens but "
            f"config.text_config.vocab_size is {vocab}"
        )
    processor = cls.build_processor(tokenizer, dict(spec.processor))
    # Drawn from the config's seed without touching the global RNG: the same untrained model everywhere.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        hf = cls.model_class(config)
    return hf, processor


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of a model's weights (names, dtypes, shapes, values of its state dict, name order):
    the same weights give the same digest whatever file format or hub revision they came from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
