"""`python -m adapt.convert official.pth out.safetensors --model glip_t`

Converts an official GLIP checkpoint into adapt's format: adapt parameter names, safetensors
(no pickle), and the GLIPConfig stored in the file so that it loads without naming the model
(``Detector.from_checkpoint``). A prompt-tuning checkpoint (with ``rpn.tunable_linear.weight``)
keeps its offset. Exits with status 1, listing the keys, if anything is missing or left over.

The source is read with ``torch.load(weights_only=True)``, which accepts tensors, containers and
numpy scalars only. A file you trust that names other globals (numpy arrays, say) is converted
with ``--allow-global NAME`` for each global the load error lists: the allowlist is widened for
that file alone, and the safetensors output never needs it again.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from adapt.atomic import atomic_path
from adapt.model.checkpoint import (
    TUNABLE_LINEAR_KEY,
    CheckpointError,
    LoadReport,
    apply_state_dict,
    read_state_dict,
    save_safetensors,
)
from adapt.model.config import GLIPConfig
from adapt.model.glip import build_glip
from adapt.model.safe_load import data_global


def convert(
    source: str | Path, target: str | Path, cfg: GLIPConfig, allow_globals: Sequence[str] = ()
) -> LoadReport:
    """Load ``source`` (official .pth) into a model of ``cfg`` and save it as ``target``."""
    sd, fmt, _ = read_state_dict(source, [data_global(g) for g in allow_globals])
    if fmt != "official":
        raise CheckpointError(f"{source}: already an adapt checkpoint")
    model = build_glip(cfg)
    if TUNABLE_LINEAR_KEY in sd:
        model.enable_prompt_tuning()
    report = apply_state_dict(model, sd, fmt, str(source))
    del sd
    with atomic_path(target) as tmp:  # an interrupted conversion leaves no half-written file
        save_safetensors(model, tmp)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    from adapt.model.config import model_config

    parser = argparse.ArgumentParser(prog="python -m adapt.convert", description=__doc__.split("\n\n")[1])
    parser.add_argument("source", help="official GLIP checkpoint (.pth)")
    parser.add_argument("target", help="output file (.safetensors)")
    parser.add_argument(
        "--model", required=True, help="model config name in conf/model/ (glip_t, glip_l, ...)"
    )
    parser.add_argument(
        "--allow-missing", action="store_true", help="write the file even if keys are missing or unexpected"
    )
    parser.add_argument(
        "--allow-global",
        action="append",
        default=[],
        metavar="NAME",
        help="also unpickle this global (as named by the load error) for this trusted file only",
    )
    args = parser.parse_args(argv)
    if Path(args.target).suffix != ".safetensors":
        parser.error(f"target must end in .safetensors: {args.target}")
    cfg = GLIPConfig.from_dict(model_config(args.model)["arch"])
    try:
        report = convert(args.source, args.target, cfg, args.allow_global)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report)
    if not report.ok and not args.allow_missing:
        Path(args.target).unlink(missing_ok=True)
        message = "the checkpoint does not fit the model (see above); --allow-missing writes it anyway"
        print(f"error: {message}", file=sys.stderr)
        return 1
    print(f"wrote {args.target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
