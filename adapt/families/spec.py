"""A family model config (``conf/model/<name>.yaml`` with a ``family:`` key), read and checked.

One config names one detector: which family runs it, where its weights come from and how its
detections are decoded. Weights come from exactly one place:

* ``weights.path``: a local folder written by ``save_pretrained``. Its ``config.json`` defines the
  architecture and its processor files the resizing, normalising and tokenising;
* ``weights.repo`` (+ ``weights.revision``): a Hugging Face hub repository, read through
  ``from_pretrained``, so the HF cache, ``HF_ENDPOINT``, ``HF_TOKEN`` and ``HF_HUB_OFFLINE`` apply;
* neither: a random-init model of the architecture ``config`` describes (the ``_mini`` configs),
  drawn from ``seed``, with the tokenizer adapt ships (``tokenizer``) and the image processor
  settings ``processor``.

With weights, ``config`` holds overrides of the stored ``config.json`` that change training, not the
architecture (``auxiliary_loss``, dropout); the weights digest that exports record catches anything
else. Bad values stop with one sentence naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any

DECODINGS = ("transformers", "topk")


class FamilyConfigError(ValueError):
    """A family model config has a missing, unknown or ill-typed key."""


@dataclass(frozen=True)
class InferenceSettings:
    """How raw outputs become detections (``adapt.families.decoding``).

    ``decoding="transformers"`` is ``post_process_grounded_object_detection``: one box per query,
    scored by its best text position, kept above ``threshold``. ``"topk"`` is how DETR-style
    grounding detectors are evaluated for AP (IDEA's COCO post-processor, mmdetection's
    GroundingDINOHead): every (query, class) pair scored by the mean probability of the class's
    positions, the best ``num_select`` pairs kept, then those above ``threshold``.
    """

    decoding: str = "transformers"
    threshold: float = 0.25
    num_select: int = 300

    def __post_init__(self) -> None:
        if self.decoding not in DECODINGS:
            raise FamilyConfigError(f"inference.decoding={self.decoding!r}: expected one of {DECODINGS}")
        if not 0.0 <= self.threshold <= 1.0:
            raise FamilyConfigError(
                f"inference.threshold={self.threshold!r}: expected a probability in [0, 1]"
            )
        if self.num_select < 1:
            raise FamilyConfigError(f"inference.num_select={self.num_select!r}: expected a positive count")


# How the protocol decodes for AP: every (query, class) pair ranked, the best 300 per image kept
# (IDEA's COCO post-processor, mmdetection's GroundingDINOHead), nothing thresholded away.
EVALUATION = InferenceSettings(decoding="topk", threshold=0.0, num_select=300)


@dataclass(frozen=True)
class FamilySpec:
    """One family model config. ``name`` is the config's name (``grounding_dino_t``)."""

    name: str
    family: str
    repo: str | None = None
    revision: str | None = None
    path: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    processor: dict[str, Any] = field(default_factory=dict)
    tokenizer: str | None = None
    seed: int = 0
    inference: InferenceSettings = field(default_factory=InferenceSettings)
    evaluation: InferenceSettings = field(default_factory=lambda: EVALUATION)
    loss: dict[str, float] = field(default_factory=dict)

    @property
    def pretrained(self) -> bool:
        return self.path is not None or self.repo is not None

    @property
    def source(self) -> str | None:
        """What ``from_pretrained`` reads: the local folder, else the hub repository."""
        return self.path if self.path is not None else self.repo

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> FamilySpec:
        """Read a model config mapping (the YAML as a dict, or Hydra's ``cfg.model``)."""
        cfg = _plain(cfg)
        name = str(cfg.get("name") or "<unnamed>")
        where = f"model config {name!r}"
        known = {
            "name",
            "family",
            "paper",
            "weights",
            "config",
            "processor",
            "tokenizer",
            "seed",
            "inference",
            "evaluation",
            "loss",
        }
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise FamilyConfigError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
        family = cfg.get("family")
        if not isinstance(family, str) or not family:
            raise FamilyConfigError(f"{where}: `family` must name a detector family")
        weights = _section(cfg, "weights", where)
        bad = sorted(set(weights) - {"repo", "revision", "path"})
        if bad:
            raise FamilyConfigError(f"{where}: unknown keys weights.{bad}; known: repo, revision, path")
        repo, revision, path = (_opt_str(weights, k, where) for k in ("repo", "revision", "path"))
        config = _section(cfg, "config", where)
        if repo is None and path is None and not config:
            raise FamilyConfigError(
                f"{where}: give weights.repo, weights.path or (random init) the architecture under `config`"
            )
        tokenizer = cfg.get("tokenizer")
        if tokenizer is not None and not isinstance(tokenizer, str):
            raise FamilyConfigError(f"{where}: tokenizer={tokenizer!r} must be a shipped tokenizer name")
        seed = cfg.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise FamilyConfigError(f"{where}: seed={seed!r} must be an integer")
        settings, evaluation = (
            _settings(cfg, key, where, default)
            for key, default in (("inference", None), ("evaluation", EVALUATION))
        )
        loss = _section(cfg, "loss", where)
        return cls(
            name=name,
            family=family,
            repo=repo,
            revision=revision,
            path=path,
            config=config,
            processor=_section(cfg, "processor", where),
            tokenizer=tokenizer,
            seed=seed,
            inference=settings,
            evaluation=evaluation,
            loss={str(k): float(v) for k, v in loss.items()},
        )


def family_model_config(name: str) -> FamilySpec:
    """A shipped ``conf/model/<name>.yaml`` that names a family, as a spec."""
    import yaml

    resource = files("adapt").joinpath("conf", "model", f"{name}.yaml")
    if not resource.is_file():
        raise FamilyConfigError(f"unknown model config {name!r} (no conf/model/{name}.yaml)")
    cfg = yaml.safe_load(resource.read_text(encoding="utf-8")) or {}
    if "family" not in cfg:
        raise FamilyConfigError(f"model config {name!r} is not a detector family's (it has no `family:`)")
    return FamilySpec.from_config(cfg)


def _plain(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """An OmegaConf node or a mapping as plain containers."""
    try:
        from omegaconf import DictConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        return dict(cfg)
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)


def _settings(
    cfg: Mapping[str, Any], key: str, where: str, default: InferenceSettings | None
) -> InferenceSettings:
    section = _section(cfg, key, where)
    if not section and default is not None:
        return default
    try:
        return InferenceSettings(**section)
    except TypeError as exc:
        raise FamilyConfigError(f"{where}: {key}: {exc}") from exc
    except FamilyConfigError as exc:
        raise FamilyConfigError(f"{where}: {key}.{str(exc).removeprefix('inference.')}") from exc


def _section(cfg: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = cfg.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise FamilyConfigError(f"{where}: `{key}` must be a mapping, got {type(value).__name__}")
    return dict(value)


def _opt_str(section: Mapping[str, Any], key: str, where: str) -> str | None:
    value = section.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise FamilyConfigError(f"{where}: weights.{key}={value!r} must be a non-empty string or null")
    return value
