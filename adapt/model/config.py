"""Architecture description of a GLIP model.

Every size knob of the official architecture lives here, so that any official-architecture
checkpoint (GLIP-T, GLIP-L, or a size nobody released) can be built from `conf/model/*.yaml`
without code changes. Defaults are GLIP-T (``configs/pretrain/glip_Swin_T_O365_GoldG.yaml``).
Keyword construction keeps building a model separate from reading a config file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field, fields
from importlib.resources import files
from typing import Any

import yaml


@dataclass
class SwinConfig:
    """Swin Transformer backbone (official ``SWINT`` keys)."""

    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.2
    # Stages before this index are frozen and kept in eval mode (official FREEZE_CONV_BODY_AT;
    # the ODinW fine-tuning commands pass 2 = patch embedding and stage 1; -1 freezes nothing).
    freeze_at: int = 2


@dataclass
class LanguageConfig:
    """BERT language backbone; the vocabulary is bert-base-uncased's and ships with adapt."""

    tokenizer: str = "bert-base-uncased"
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    vocab_size: int = 30522
    max_position_embeddings: int = 512
    max_query_len: int = 256


@dataclass
class HeadConfig:
    """Deep-fusion VLDyHead with the ATSS prediction layers."""

    channels: int = 256  # FPN and head width (official BACKBONE.OUT_CHANNELS = DYHEAD.CHANNELS)
    num_layers: int = 6  # official DYHEAD.NUM_CONVS: fusion + BERT layer + DyConv per layer
    early_fusion: bool = True  # official EARLY_FUSE_ON; False is GLIP-T (A)
    fusion_embed_dim: int = 2048  # hard-coded in the official BiMultiHeadAttention at every size
    fusion_heads: int = 8
    fusion_dropout: float = 0.1
    group_norm_groups: int = 16
    legacy_num_classes: int = 80  # width of the unused cls_logits conv (official NUM_CLASSES - 1)
    prior_prob: float = 0.01
    # Layer-scale init of the fusion; None means the official 1 / num_layers.
    layer_scale_init: float | None = None
    # Official DYHEAD.USE_CHECKPOINT: recompute the fusion in backward, saving memory for FLOPs
    # (same numbers either way). true, false, or "auto": a training step turns it off when the
    # fusion's activations fit in half the free memory (adapt.train.checkpointing).
    use_checkpoint: bool | str = "auto"

    def __post_init__(self) -> None:
        if self.use_checkpoint not in (True, False, "auto"):
            raise ValueError(
                f"model.arch.head.use_checkpoint must be true, false or auto, got {self.use_checkpoint!r}"
            )


@dataclass
class FPNConfig:
    drop_block_prob: float = 0.3
    drop_block_size: int = 3


@dataclass
class AnchorConfig:
    sizes: tuple[int, ...] = (64, 128, 256, 512, 1024)
    strides: tuple[int, ...] = (8, 16, 32, 64, 128)


@dataclass
class InferenceConfig:
    """Official MODEL.ATSS inference settings."""

    score_threshold: float = 0.05
    pre_nms_top_n: int = 1000
    nms_threshold: float = 0.6
    detections_per_image: int = 100


@dataclass
class LossConfig:
    """Official ATSS loss settings."""

    topk: int = 9
    reg_loss_weight: float = 2.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0


@dataclass
class InputConfig:
    """Official image preprocessing (INPUT.* and DATALOADER.SIZE_DIVISIBILITY)."""

    min_size_test: int = 800
    max_size_test: int = 1333
    min_size_train: tuple[int, ...] = (480, 560, 640, 720, 800)
    max_size_train: int = 1333
    pixel_mean: tuple[float, float, float] = (103.530, 116.280, 123.675)  # BGR, 0..255
    pixel_std: tuple[float, float, float] = (57.375, 57.120, 58.395)
    size_divisibility: int = 32


@dataclass
class GLIPConfig:
    """The whole detector. ``GLIPConfig.from_dict(cfg)`` accepts the nested yaml layout."""

    swin: SwinConfig = field(default_factory=SwinConfig)
    fpn: FPNConfig = field(default_factory=FPNConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    input: InputConfig = field(default_factory=InputConfig)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> GLIPConfig:
        """Build from a (possibly partial) nested mapping; unknown keys are an error, by name."""
        d = dict(d or {})
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            sub = d.pop(f.name, None)
            sub_cls: Any = f.default_factory  # every section is a dataclass with a default factory
            if sub is None:
                kwargs[f.name] = sub_cls()
                continue
            sub = dict(sub)
            known = {sf.name for sf in fields(sub_cls)}
            unknown = sorted(set(sub) - known)
            if unknown:
                raise ValueError(
                    f"unknown model config key(s) {unknown} in section '{f.name}'; known: {sorted(known)}"
                )
            sub = {k: tuple(v) if isinstance(v, list) else v for k, v in sub.items()}
            kwargs[f.name] = sub_cls(**sub)
        if d:
            raise ValueError(
                f"unknown model config section(s) {sorted(d)}; known: {[f.name for f in fields(cls)]}"
            )
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_tokenizer(self, tokenizer: str) -> GLIPConfig:
        """The same configuration, its tokenizer read from ``tokenizer`` (a shipped name or a folder)."""
        return dataclasses.replace(self, language=dataclasses.replace(self.language, tokenizer=tokenizer))

    @property
    def layer_scale_init(self) -> float:
        h = self.head
        return h.layer_scale_init if h.layer_scale_init is not None else 1.0 / h.num_layers

    @property
    def swin_out_channels(self) -> tuple[int, ...]:
        """Channels of Swin stages 2..4 (strides 8, 16, 32), the FPN inputs."""
        n = len(self.swin.depths)
        return tuple(self.swin.embed_dim * 2**i for i in range(1, n))


def model_names() -> list[str]:
    """The model configs shipped in ``conf/model/`` (glip_t, glip_l, ...)."""
    folder = files("adapt").joinpath("conf", "model")
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def model_config(name: str) -> dict[str, Any]:
    """The shipped ``conf/model/<name>.yaml`` as a plain dict (``name``, ``checkpoint``, ``arch``)."""
    if name not in model_names():  # a name, never a path (it may come from an export's metadata)
        raise ValueError(f"unknown model config {name!r}; known: {model_names()}")
    resource = files("adapt").joinpath("conf", "model", f"{name}.yaml")
    return yaml.safe_load(resource.read_text())
