"""The weights a model starts from: a whole checkpoint, or a run's export on the weights it was
trained on.

Why a module of its own: an export holds only what its run trained. A full fine-tune leaves out the
frozen Swin stages (``freeze_at``) and the unused class-logit head; a linear probe holds nothing but
the head's box, centerness and text-projection parameters. Loaded like a checkpoint, everything else
would keep the random init, silently for the frozen stages. So wherever a user gives a weights file
(``checkpoint=`` of a run, ``Detector.from_config(checkpoint=...)``), an export is loaded the way its
run built the model: the recorded base weights first (the model's official or packaged checkpoint,
checked by SHA-256, or the seeded random init), then the export's tensors on top.

Only exports whose tensors are model parameters (:data:`WEIGHT_MODES`) can be a start; a prompt,
context-token, fusion-prompt, LoRA or ensemble export is refused with what to do instead. Nothing
an export names is opened: its recorded base must be a file this model's config knows.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from adapt.export import CONFIG_FILE, TENSORS_FILE, Export, ExportError, load_export
from adapt.model.checkpoint import LoadReport, load_checkpoint
from adapt.model.glip import GLIP
from adapt.modes.base import load_named_tensors

# Modes whose exports are model parameters under adapt names (a whole model once on their base).
WEIGHT_MODES = ("full", "linear")


def is_export(path: str | Path) -> bool:
    """``path`` is an adapt export folder or its tensor file (not a checkpoint of a whole model)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    named = path.is_dir() or path.name == TENSORS_FILE
    return named and (folder / CONFIG_FILE).is_file() and (folder / TENSORS_FILE).is_file()


def recognisable(ck: Mapping[str, Any]) -> str:
    """The base weights as a user knows them: the path the run was given, and the run folder an
    export's tensors came from (``checkpoint=<run>/export/adapter_model.safetensors``)."""
    text = str(ck.get("path") or ck.get("file"))
    return f"{text} (from the run {ck['run']})" if ck.get("run") else text


def export_base_weights(
    export: Export, checkpoint: str | Path | None, official: Mapping[str, Any] | None, download: bool
) -> Path | None:
    """The weights file ``export`` was trained on, checked by SHA-256 (None: the seeded random init).

    ``checkpoint`` is the user's file; without one, the model config's official checkpoint is taken
    through :func:`adapt.download.require_checkpoint` when it is the recorded file. Any other weights
    stop here with the hash they should have.
    """
    ck, where = export.checkpoint, export.metadata_file
    if not ck:
        raise ExportError(
            f"{where}: records no base weights (base_model.checkpoint), so it cannot be checked"
        )
    if ck.get("file") is None and checkpoint is None:
        return None
    if checkpoint is None:
        want = (official or {}).get("checkpoint") or {}
        # Exports record the file's name; a packaged checkpoint's config names "package:<path>".
        if Path(str(want.get("file"))).name != ck.get("file"):
            raise ExportError(
                f"{where}: trained on checkpoint {recognisable(ck)} (sha256 {ck.get('sha256')}), which is "
                f"not {export.base_name}'s official one; pass that file as --checkpoint "
                "(Detector.from_export(..., checkpoint=...))"
            )
        from adapt.download import require_checkpoint

        checkpoint = require_checkpoint(official, download=download)  # type: ignore[arg-type]
        assert checkpoint is not None
    return export.verify_weights(checkpoint)


def load_weights(
    model: GLIP, path: str | Path, official: Mapping[str, Any] | None = None, download: bool = False
) -> LoadReport:
    """Load ``path`` into ``model``: a checkpoint as it is, an export on top of its base weights.

    ``official`` is the model config whose checkpoint an export's base may be (``download=True``
    fetches it). For an export, the report is the base's load, with a note naming the export.
    """
    if not is_export(path):
        return load_checkpoint(model, path)
    export = load_export(path)
    if export.policy_name not in WEIGHT_MODES:
        raise ExportError(
            f"{export.metadata_file}: a {export.mode} export holds no model weights to start from "
            f"(only {' and '.join(WEIGHT_MODES)} exports do); detect with it by `python -m adapt.predict "
            f"--prompt {export.folder}`, or start from the weights it was trained on"
        )
    export.check_model(model)
    seed = export.random_init_seed
    if seed not in (None, 0):
        raise ExportError(
            f"{export.metadata_file}: trained on {export.base_name}'s random init with seed {seed}; "
            "a weights file starts from the model's seed-0 init"
        )
    base = export_base_weights(export, None, official, download)
    if base is None:
        report = LoadReport(file=f"({export.base_name}'s seeded random init)", format="no")
    else:
        report = load_checkpoint(model, base)  # an official or packaged file: a whole model
    tensors = {k: v for k, v in export.tensors.items() if not k.startswith("prompt.")}
    load_named_tensors(export, model, tensors)
    report.notes.append(
        f"then the {export.mode} export {export.tensors_file}: {len(tensors)} trained tensors on top"
    )
    return report
