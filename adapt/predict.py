"""`python -m adapt.predict IMAGES... (--classes "a,b,c" | --prompt ARTIFACT) [--model NAME]`.

Detects classes in images (files, or folders of them) and writes ``<out>/detections.json`` (a COCO
file: images, categories and one annotation per detection with its ``score``, boxes in original
pixels, xywh with GLIP's +1 convention) and one drawn JPEG per input, ``<out>/<stem>.jpg``, or
``<stem>-2.jpg``, ... where that name is an input or is taken by an earlier input of the same stem
(:mod:`adapt.imagefiles`): no input is ever overwritten. ``adapt.evaluate`` scores the file against
a ground truth by matching ``file_name``, not the ids (they number the inputs 1..N).

``--prompt`` takes an artifact exported by a training run (``<run>/export``) and, with no other
flag, reproduces the run's test detections: it loads the base weights the run trained on (checked
by SHA-256; other weights are refused with the expected hash), and uses the run's test-time input
sizes, inference settings, caption and evaluation batch size (padding depends on it: another
``--batch-size`` gives the same AP, scores further off in their last bits). A prompt-tuning
artifact carries its prompt embeddings, so detection runs *without* the text encoder (it is removed
from the model after loading); a linear-probe, LoRA or full artifact is loaded onto the model and
detects the classes it was trained on (or ``--classes``). Size and inference flags still override
what the export records, with a note.

Detector families (``adapt.families``: Grounding DINO, MM Grounding DINO / LLMDet, OWLv2) run the
same way: ``--model grounding_dino_t`` (a family model config), ``--checkpoint DIR`` (any
``save_pretrained`` folder, with or without ``--model``), or ``--prompt`` on a family run's export
(``adapt.family_detector``). Their detections are transformers' pipeline's (processor, model,
``post_process_grounded_object_detection`` at the model config's threshold, ``--score-threshold``
replacing it), and their boxes are written in transformers' convention (w = x2 - x1). An image's
detections do not depend on the batch size (images are batched only with images of their size).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from adapt.data.io import read_image
from adapt.detector import Detector
from adapt.family_detector import FamilyDetector, family_requested
from adapt.imagefiles import expand_images, write_predictions
from adapt.inference_flags import SETTINGS, add_setting_flags, apply_setting_flags

COLORS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45")


def override_family_settings(detector: FamilyDetector, args: argparse.Namespace, from_export: bool) -> None:
    """A detector family's decoding threshold is ``--score-threshold``; the other flags are GLIP's
    (a family's processor sets the image size, its decoding has no NMS)."""
    for flag in SETTINGS:
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is None:
            continue
        if flag != "--score-threshold":
            raise ValueError(f"{flag} is a GLIP setting; a detector family's processor sets its input sizes")
        if from_export and value != detector.settings.threshold:
            print(
                f"adapt.predict: note: {flag} {value} replaces the export's threshold="
                f"{detector.settings.threshold}; detections will differ from the run's",
                file=sys.stderr,
            )
        detector.set_threshold(value)


def build_parser() -> argparse.ArgumentParser:
    """The command line; its description and epilog say what is read and what is written."""
    parser = argparse.ArgumentParser(
        prog="python -m adapt.predict",
        description=__doc__.split("\n\n")[0],
        epilog=(
            "Writes into --out: detections.json (COCO: images with their file_name as given and the "
            "name of their drawn copy, categories, one annotation per detection with its score; "
            "python -m adapt.evaluate --gt GT --dt detections.json scores it, matching images by file "
            "name) and one drawn JPEG per image, <stem>.jpg (<stem>-2.jpg, ... where that name is an "
            "input or another input has the same stem: no input is ever overwritten)."
        ),
    )
    parser.add_argument("images", nargs="+", help="image files or folders (a folder: the images in it)")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--classes", help='comma-separated class names, e.g. "fish,jellyfish,penguin"')
    which.add_argument("--prompt", help="an exported artifact folder (<run>/export)")
    parser.add_argument(
        "--model", help="model config name (conf/model/); default: the artifact's, else glip_t"
    )
    parser.add_argument(
        "--checkpoint",
        help="weights file instead of the model's official checkpoint (a detector family's: a "
        "save_pretrained folder)",
    )
    parser.add_argument(
        "--tokenizer",
        help="tokenizer folder, for an export or checkpoint whose tokenizer adapt does not ship",
    )
    parser.add_argument("--out", default="predictions", help="output folder (default: predictions)")
    parser.add_argument(
        "--threshold", type=float, default=0.3, help="score threshold for drawing (default 0.3)"
    )
    add_setting_flags(parser)
    parser.add_argument(
        "--batch-size",
        type=int,
        help="images per forward pass (default: the run's evaluation batch size an export records, "
        "else 1); padding depends on it, so the run's batch size comes closest to its test "
        "detections (the same AP; scores within about 1e-8)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        images = expand_images(args.images)
        classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
        detector: Detector | FamilyDetector
        if family_requested(args.model, args.checkpoint, args.prompt):  # adapt.families' detectors
            detector = FamilyDetector.load(
                args.model, args.checkpoint, args.prompt, args.device, batch_size=args.batch_size or 1
            )
            override_family_settings(detector, args, from_export=bool(args.prompt))
        elif args.prompt:  # no --batch-size: the run's evaluation batch size, as the export records it
            detector = Detector.from_export(
                args.prompt,
                args.model,
                args.checkpoint,
                args.device,
                batch_size=args.batch_size,
                tokenizer=args.tokenizer,
            )
        else:
            detector = Detector.from_config(
                args.model or "glip_t", args.checkpoint, args.device, batch_size=args.batch_size or 1
            )
        if isinstance(detector, Detector):
            if args.batch_size is None and detector.recorded_batch_size is None:
                detector.batch_size = 1  # an export from before the size was recorded: one at a time
            apply_setting_flags(detector.model.cfg, args, "adapt.predict", from_export=bool(args.prompt))
        results = detector.predict(images, classes=classes)
        names = classes or detector.default_classes
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"adapt.predict: error: {exc}", file=sys.stderr)
        return 2
    written = write_predictions(
        args.out, images, results, names, args.threshold, read_image, plus_one=detector.boxes.plus_one
    )
    total = sum(len(r) for r in results)
    print(f"{total} detections in {len(results)} images -> {written} (drawn copies beside)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
