"""`python -m adapt.deploy export ...` and `python -m adapt.deploy predict ...` (see ``adapt.deploy``).

``export`` takes an export folder (``<run>/export``: its classes, weights and recorded settings) or
``--classes`` with ``--model``/``--checkpoint`` (a plain class list on base weights, the model
config's sizes and settings unless the size and inference flags say otherwise). ``predict`` needs
only numpy, Pillow and onnxruntime: torch is imported by ``export`` alone.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from adapt.imagefiles import expand_images, write_predictions
from adapt.inference_flags import add_setting_flags, apply_setting_flags

PROG = "python -m adapt.deploy"


def _export(args: argparse.Namespace) -> int:
    from adapt.deploy import deform
    from adapt.deploy.export import export_onnx
    from adapt.deploy.source import from_classes, from_export

    if (args.export is None) == (args.classes is None):
        print(f"{PROG} export: error: give an export folder or --classes (not both)", file=sys.stderr)
        return 2
    if args.deform_conv not in deform.IMPLEMENTATIONS:
        print(f"{PROG} export: error: --deform-conv must be one of {deform.IMPLEMENTATIONS}", file=sys.stderr)
        return 2
    if args.export is not None:
        source = from_export(args.export, model=args.model, checkpoint=args.checkpoint)
    else:
        classes = [c.strip() for c in args.classes.split(",") if c.strip()]
        if not classes:
            print(f"{PROG} export: error: --classes is empty", file=sys.stderr)
            return 2
        source = from_classes(classes, model=args.model or "glip_t", checkpoint=args.checkpoint)
    apply_setting_flags(source.model.cfg, args, PROG, from_export=args.export is not None)
    out = export_onnx(source, args.out, deform_conv=args.deform_conv)
    size = out.stat().st_size / 2**20
    print(f"{len(source.class_names)} classes, {size:.1f} MiB -> {out}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from adapt.deploy.runtime import DeployedDetector, read_image

    images = expand_images(args.images)
    detector = DeployedDetector(args.detector, threads=args.threads)
    results = detector.predict(images, batch_size=args.batch_size)
    written = write_predictions(args.out, images, results, detector.class_names, args.threshold, read_image)
    total = sum(len(r) for r in results)
    print(f"{total} detections in {len(results)} images -> {written}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="write an ONNX detector from an export folder or a class list")
    e.add_argument("export", nargs="?", help="an exported artifact folder (<run>/export)")
    e.add_argument("--classes", help='comma-separated class names on base weights, e.g. "fish,jellyfish"')
    e.add_argument("--model", help="model config name (conf/model/); default: the export's, else glip_t")
    e.add_argument("--checkpoint", help="weights file instead of the model's official checkpoint")
    e.add_argument("--out", required=True, help="the .onnx file to write")
    e.add_argument(
        "--deform-conv",
        default="deformconv",
        help="deformable conv as ONNX DeformConv or gather (standard ops)",
    )
    add_setting_flags(e)
    r = sub.add_parser("predict", help="detect with a deployed file (numpy, Pillow, onnxruntime only)")
    r.add_argument("detector", help="the .onnx file written by export")
    r.add_argument("images", nargs="+", help="image files or folders (a folder: the images in it)")
    r.add_argument("--out", default="predictions", help="output folder (default: predictions)")
    r.add_argument("--threshold", type=float, default=0.3, help="score threshold for drawing (default 0.3)")
    r.add_argument("--batch-size", type=int, default=1)
    r.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: all cores)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return _export(args) if args.command == "export" else _predict(args)
    except (ValueError, FileNotFoundError, OSError) as exc:  # every adapt error type is a ValueError
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
