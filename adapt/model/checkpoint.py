"""Checkpoints: official GLIP ``.pth`` <-> adapt parameter names, and adapt's safetensors format.

The official names come from maskrcnn_benchmark's module tree; adapt uses library modules
(transformers Swin/BERT, torchvision FPN) whose names differ. The map is written once, adapt ->
official (:func:`official_name`), and the reverse direction is derived from it over the keys a
model actually has, so the two cannot drift apart. Differences handled here:

* Swin's fused ``attn.qkv`` [3C, C] is split with ``chunk(3)`` into q/k/v projections (and
  concatenated back when saving);
* buffers the official model stores but adapt derives from the config are checked, then dropped:
  ``attn.relative_position_index`` (window size) and ``rpn.anchor_generator.cell_anchors.{l}``;
  the legacy ``embeddings.position_ids`` of old transformers versions is dropped;
* ``rpn.tunable_linear.weight`` [1000, D] (official prompt tuning) becomes ``prompt_offset``
  (rows [:max_query_len], the only ones ever read) when prompt tuning is enabled;
* ``head.cls_logits.*`` (legacy, frozen, unused) keeps its init on a shape mismatch, as the
  official loader does when NUM_CLASSES differs.

Every other shape mismatch is an error naming the key, the file and both shapes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from transformers.models.swin.modeling_swin import SwinRelativePositionBias

from adapt.model.anchors import AnchorGenerator
from adapt.model.config import GLIPConfig
from adapt.model.safe_load import CheckpointError, torch_load_safely

if TYPE_CHECKING:
    from adapt.model.glip import GLIP

# Official prompt tuning allocates 1000 rows (Linear(lang_dim, 1000)); only [:max_query_len] are used.
TUNABLE_LINEAR_ROWS = 1000
TUNABLE_LINEAR_KEY = "rpn.tunable_linear.weight"
LEGACY_POSITION_IDS_KEY = "language_backbone.body.model.embeddings.position_ids"
ANCHOR_KEY = re.compile(r"^rpn\.anchor_generator\.cell_anchors\.(\d+)$")
REL_INDEX_KEY = re.compile(r"^backbone\.body\.layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_index$")
QKV = re.compile(r"^(.*)\.attention\.([qkv])_proj\.(weight|bias)$")
SAFETENSORS_CONFIG_KEY = "glip_config"
SAFETENSORS_FORMAT = "adapt-glip"

_SWIN_BLOCK = r"^backbone\.body\.swin\.encoder\.layers\.(\d+)\.blocks\.(\d+)\."
# adapt -> official, applied in order; the first match wins.
_RULES: list[tuple[re.Pattern[str], str]] = [
    (
        re.compile(r"^backbone\.body\.swin\.embeddings\.patch_embeddings\.projection\."),
        "backbone.body.patch_embed.proj.",
    ),
    (re.compile(r"^backbone\.body\.swin\.embeddings\.norm\."), "backbone.body.patch_embed.norm."),
    (re.compile(_SWIN_BLOCK + r"layernorm_before\."), r"backbone.body.layers.\1.blocks.\2.norm1."),
    (re.compile(_SWIN_BLOCK + r"layernorm_after\."), r"backbone.body.layers.\1.blocks.\2.norm2."),
    (re.compile(_SWIN_BLOCK + r"attention\.[qkv]_proj\."), r"backbone.body.layers.\1.blocks.\2.attn.qkv."),
    (re.compile(_SWIN_BLOCK + r"attention\.o_proj\."), r"backbone.body.layers.\1.blocks.\2.attn.proj."),
    (
        re.compile(_SWIN_BLOCK + r"attention\.relative_position_bias\.relative_position_bias_table$"),
        r"backbone.body.layers.\1.blocks.\2.attn.relative_position_bias_table",
    ),
    (re.compile(_SWIN_BLOCK + r"mlp\."), r"backbone.body.layers.\1.blocks.\2.mlp."),
    (
        re.compile(r"^backbone\.body\.swin\.encoder\.layers\.(\d+)\.downsample\."),
        r"backbone.body.layers.\1.downsample.",
    ),
    (re.compile(r"^backbone\.fpn\.extra_blocks\."), "backbone.fpn.top_blocks."),
    (re.compile(r"^language_backbone\."), "language_backbone.body.model."),
    (re.compile(r"^head\."), "rpn.head."),
    (re.compile(r"^prompt_offset$"), TUNABLE_LINEAR_KEY),
]
# Official names counted from the first FPN input (fpn_inner2 = stride 8) and the first normed stage.
_FPN_BLOCK = re.compile(r"^backbone\.fpn\.(inner|layer)_blocks\.(\d+)\.0\.")
_STAGE_NORM = re.compile(r"^backbone\.body\.hidden_states_norms\.stage(\d+)\.")


# Parameters the model has but never uses (the official constructor keeps the legacy class-logit
# layer; GLIP scores by text alignment), so a file without them lacks nothing: a full fine-tune's
# export leaves them out, and a load report calls them "unused", not "missing".
UNUSED_KEYS = re.compile(r"^head\.cls_logits\.")


@dataclass
class LoadReport:
    """What a load did. ``missing``: adapt names left at their init; ``unused``: names the model
    never uses, absent from the file and left at init (:data:`UNUSED_KEYS`); ``unexpected``:
    checkpoint keys (as named in the file) that were not used; ``notes``: deliberate deviations."""

    file: str
    format: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sort_unused()

    def sort_unused(self) -> None:
        """Move never-used names from ``missing`` to ``unused``."""
        self.unused += [k for k in self.missing if UNUSED_KEYS.match(k)]
        self.missing = [k for k in self.missing if not UNUSED_KEYS.match(k)]

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unexpected

    def __str__(self) -> str:
        lines = [f"loaded {self.format} checkpoint {self.file}"]
        if self.missing:
            lines.append(f"  missing ({len(self.missing)}, left at init): {', '.join(self.missing)}")
        if self.unused:
            lines.append(
                f"  unused by the model ({len(self.unused)}, not in the file, left at init): "
                f"{', '.join(self.unused)}"
            )
        if self.unexpected:
            lines.append(f"  unexpected ({len(self.unexpected)}, ignored): {', '.join(self.unexpected)}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def official_name(name: str) -> str:
    """Official GLIP key of an adapt parameter/buffer name (q/k/v all map to the fused ``qkv``)."""
    m = _FPN_BLOCK.match(name)
    if m:
        return f"backbone.fpn.fpn_{m.group(1)}{int(m.group(2)) + 2}.{name[m.end() :]}"
    m = _STAGE_NORM.match(name)
    if m:
        return f"backbone.body.norm{int(m.group(1)) - 1}.{name[m.end() :]}"
    for pattern, repl in _RULES:
        if pattern.search(name):
            return pattern.sub(repl, name, count=1)
    raise KeyError(f"no official GLIP name for parameter '{name}'")


# --------------------------------------------------------------------------------------------------
# Reading files (the untrusted-file side is adapt.model.safe_load)


def _unwrap(obj: object, file: str) -> dict[str, Tensor]:
    """``{"model": sd, ...}`` (release files also hold optimizer, scheduler, iteration) or a bare
    state dict; strips a DDP ``module.`` prefix present on every key."""
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{file}: not a GLIP checkpoint (expected a state dict or {{'model': state_dict}})"
        )
    sd = dict(obj)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def read_state_dict(
    path: str | Path,
    extra_globals: Sequence[Any] = (),
) -> tuple[dict[str, Tensor], str, dict[str, str]]:
    """(state dict, format "official" | "adapt", metadata) of a file, chosen by its suffix.

    ``extra_globals`` widens the allowlist for one trusted file (``adapt.convert --allow-global``).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt", device="cpu") as f:
                metadata = dict(f.metadata() or {})
                sd = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
        except Exception as exc:  # safetensors raises several types for a damaged file
            raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from exc
        return sd, "adapt", metadata
    obj = torch_load_safely(path, extra_globals)
    return _unwrap(obj, str(path)), "official", {}


def read_config(path: str | Path) -> GLIPConfig | None:
    """The GLIPConfig stored in an adapt ``.safetensors`` file (None for official files)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from exc
    if SAFETENSORS_CONFIG_KEY not in metadata:
        return None
    return GLIPConfig.from_dict(json.loads(metadata[SAFETENSORS_CONFIG_KEY]))


# --------------------------------------------------------------------------------------------------
# official -> adapt


def _mismatch(
    file: str, adapt_key: str, official_key: str, expected: torch.Size, got: torch.Size
) -> CheckpointError:
    return CheckpointError(
        f"{file}: shape mismatch for '{official_key}' (model parameter '{adapt_key}'): "
        f"checkpoint has {list(got)}, the model expects {list(expected)}; is the model config right?"
    )


def _check_derived_buffers(sd: dict[str, Tensor], cfg: GLIPConfig, file: str, report: LoadReport) -> None:
    """Check and drop the buffers adapt derives from the config instead of storing them."""
    cells = AnchorGenerator(cfg.anchors.sizes, cfg.anchors.strides).cell_anchors
    window = cfg.swin.window_size
    rel_index = SwinRelativePositionBias(1, (window, window))._create_relative_position_index()
    for key in [k for k in sd if ANCHOR_KEY.match(k) or REL_INDEX_KEY.match(k)]:
        value = sd.pop(key)
        m = ANCHOR_KEY.match(key)
        expected = cells[int(m.group(1))] if m and int(m.group(1)) < len(cells) else rel_index
        if m and int(m.group(1)) >= len(cells):
            raise CheckpointError(f"{file}: '{key}' but the config has {len(cells)} anchor levels")
        if value.shape != expected.shape or not torch.equal(value.to(expected.dtype), expected):
            raise CheckpointError(
                f"{file}: '{key}' = {value.tolist()} disagrees with the config ({expected.tolist()}); "
                "check model.arch.anchors / model.arch.swin.window_size"
            )
    if sd.pop(LEGACY_POSITION_IDS_KEY, None) is not None:
        report.notes.append(f"dropped legacy buffer {LEGACY_POSITION_IDS_KEY} (older transformers)")


def official_to_adapt(
    sd: dict[str, Tensor], expected: Mapping[str, torch.Size], cfg: GLIPConfig, file: str = "<state dict>"
) -> tuple[dict[str, Tensor], LoadReport]:
    """Map an official state dict onto adapt names.

    ``expected`` maps every adapt key the model has to its shape (``model.state_dict()`` shapes,
    or those of a meta-device model), so nothing is materialised just to convert.
    """
    sd = dict(sd)
    report = LoadReport(file=file, format="official")
    _check_derived_buffers(sd, cfg, file, report)
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    for key, shape in expected.items():
        off = official_name(key)
        if off not in sd:
            report.missing.append(key)
            continue
        value = sd[off]
        used.add(off)
        qkv = QKV.match(key)
        if qkv and off.endswith((".qkv.weight", ".qkv.bias")):
            if value.shape[0] % 3:
                raise _mismatch(file, key, off, shape, value.shape)
            value = value.chunk(3, dim=0)["qkv".index(qkv.group(2))]
        elif key == "prompt_offset":
            if value.dim() != 2 or value.shape[1] != shape[1] or value.shape[0] < shape[0]:
                raise _mismatch(file, key, off, shape, value.shape)
            unused = value[shape[0] :]
            if unused.abs().sum() > 0:
                report.notes.append(f"{off}: rows {shape[0]}.. are non-zero but never used (official too)")
            value = value[: shape[0]]
        if value.shape != shape:
            if key.startswith("head.cls_logits."):
                report.notes.append(
                    f"{off}: shape {list(value.shape)} != {list(shape)}; legacy and unused, kept at init"
                )
                continue
            raise _mismatch(file, key, off, shape, value.shape)
        out[key] = value.clone() if qkv else value
    for key in sd:
        if key in used:
            continue
        report.unexpected.append(key)
        if key == TUNABLE_LINEAR_KEY:
            report.notes.append(
                f"{key} (a prompt-tuning offset) ignored: call model.enable_prompt_tuning() to load it"
            )
    return out, report


# --------------------------------------------------------------------------------------------------
# adapt -> official


def official_state_dict(model: GLIP) -> dict[str, Tensor]:
    """The model's weights under official key names, loadable by the official GLIP code.

    Restores the derived buffers (relative position index, cell anchors) and pads the prompt
    offset to the official 1000-row ``tunable_linear`` with zeros.
    """
    cfg = model.cfg
    out: dict[str, Tensor] = {}
    pending_qkv: dict[str, dict[str, Tensor]] = {}
    for key, value in model.state_dict().items():
        off = official_name(key)
        qkv = QKV.match(key)
        if qkv:
            parts = pending_qkv.setdefault(off, {})
            parts[qkv.group(2)] = value
            if len(parts) == 3:
                out[off] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
            continue
        if key == "prompt_offset":
            padded = value.new_zeros((TUNABLE_LINEAR_ROWS, value.shape[1]))
            padded[: value.shape[0]] = value
            value = padded
        out[off] = value.detach().clone()
    window = cfg.swin.window_size
    rel_index = SwinRelativePositionBias(1, (window, window))._create_relative_position_index()
    for s, depth in enumerate(cfg.swin.depths):
        for b in range(depth):
            out[f"backbone.body.layers.{s}.blocks.{b}.attn.relative_position_index"] = rel_index.clone()
    cells = AnchorGenerator(cfg.anchors.sizes, cfg.anchors.strides).cell_anchors
    for level, cell in enumerate(cells):
        out[f"rpn.anchor_generator.cell_anchors.{level}"] = cell
    return out


def save_official(model: GLIP, path: str | Path) -> None:
    """``torch.save({"model": official_state_dict(model)}, path)``, the official file layout."""
    torch.save({"model": official_state_dict(model)}, Path(path))


# --------------------------------------------------------------------------------------------------
# adapt's own format


def save_safetensors(model: GLIP, path: str | Path, state_dict: Mapping[str, Tensor] | None = None) -> None:
    """Weights under adapt names + the GLIPConfig (JSON in the file's metadata), byte-reproducible:
    the same weights give the same file (:func:`canonical_safetensors`)."""
    from safetensors.torch import save

    sd = {k: v.detach().contiguous().cpu() for k, v in (state_dict or model.state_dict()).items()}
    metadata = {"format": SAFETENSORS_FORMAT, SAFETENSORS_CONFIG_KEY: json.dumps(model.cfg.to_dict())}
    Path(path).write_bytes(canonical_safetensors(save(sd, metadata=metadata)))


def _weights_config(cfg: GLIPConfig) -> dict[str, object]:
    """The configuration the weights depend on: input sizes and inference settings left out (a
    run may test at another size, e.g. the demo's budget, without the weights being different)."""
    return {k: v for k, v in cfg.to_dict().items() if k not in ("input", "inference")}


def canonical_safetensors(data: bytes) -> bytes:
    """A safetensors file's bytes with its metadata entries in sorted key order.

    Why: safetensors writes the metadata map in an order that changes from process to process, so
    two runs that produce identical tensors would write files with different SHA-256, and a pinned
    hash (``glip_mini_pretrained``) could not be reproduced. Tensors, offsets and data are kept
    as they are; the header is re-serialised compactly and padded to a multiple of 8 bytes.
    """
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size].decode("utf-8"))
    metadata = header.pop("__metadata__", None)
    if metadata is not None:
        header = {"__metadata__": dict(sorted(metadata.items())), **header}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + size :]


def _adapt_to_adapt(
    sd: dict[str, Tensor], expected: Mapping[str, torch.Size], file: str
) -> tuple[dict[str, Tensor], LoadReport]:
    report = LoadReport(file=file, format="adapt")
    out: dict[str, Tensor] = {}
    for key, shape in expected.items():
        if key not in sd:
            report.missing.append(key)
        elif sd[key].shape != shape:
            if key.startswith("head.cls_logits."):
                report.notes.append(
                    f"{key}: shape {list(sd[key].shape)} != {list(shape)}; unused, kept at init"
                )
                continue
            raise _mismatch(file, key, key, shape, sd[key].shape)
        else:
            out[key] = sd[key]
    report.unexpected = [k for k in sd if k not in expected]
    return out, report


def load_checkpoint(model: GLIP, path: str | Path, strict: bool = False) -> LoadReport:
    """Load an official ``.pth`` or an adapt ``.safetensors`` file into ``model``.

    Missing and unexpected keys are reported by name (``strict=True`` makes them an error);
    shape mismatches always raise, naming the key, the file and both shapes.
    """
    sd, fmt, metadata = read_state_dict(path)
    return apply_state_dict(model, sd, fmt, str(path), metadata, strict)


def apply_state_dict(
    model: GLIP,
    sd: dict[str, Tensor],
    fmt: str = "official",
    file: str = "<state dict>",
    metadata: Mapping[str, str] | None = None,
    strict: bool = False,
) -> LoadReport:
    """:func:`load_checkpoint` for a state dict already in memory (``fmt``: "official" | "adapt")."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    if fmt == "adapt":
        mapped, report = _adapt_to_adapt(sd, expected, file)
        stored = (metadata or {}).get(SAFETENSORS_CONFIG_KEY)
        if stored is not None and _weights_config(
            GLIPConfig.from_dict(json.loads(stored))
        ) != _weights_config(model.cfg):
            report.notes.append("the file was saved from a model with a different GLIPConfig")
    else:
        mapped, report = official_to_adapt(sd, expected, model.cfg, file)
    report.sort_unused()
    if strict and not report.ok:
        raise CheckpointError(str(report))
    result = model.load_state_dict(mapped, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    return report
