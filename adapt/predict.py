"""`python -m adapt.predict IMAGES... (--classes "a,b,c" | --prompt ARTIFACT) [--model NAME]`.

Detects classes in images and writes ``<out>/detections.json`` (a COCO file: images, categories and
one annotation per detection with its ``score``, boxes in original pixels, xywh with GLIP's +1
convention) and one ``<out>/<image>.jpg`` per input with the boxes drawn.

``--prompt`` takes an artifact exported by a training run (``<run>/export``). A prompt-tuning
artifact carries its prompt embeddings, so detection runs *without* the text encoder (it is
removed from the model after loading); a linear-probe or LoRA artifact is loaded onto the model
and detects the classes it was trained on (or ``--classes``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import ImageDraw

from adapt.atomic import write_json
from adapt.data.io import read_image
from adapt.data.transforms import Resize, ToTensor, resize_boxes
from adapt.model import GLIP, GLIPConfig, batch_images, build_glip, load_checkpoint
from adapt.prompt import encode_prompt_chunks, load_tokenizer
from adapt.train.export import Export, load_export

COLORS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45")


def build_model(
    name: str, checkpoint: str | None, input_size: tuple[int | None, int | None]
) -> tuple[GLIP, str]:
    """The base model by config name (conf/model/), with its official checkpoint unless one is given."""
    from adapt.detector import model_config
    from adapt.download import require_checkpoint

    conf = model_config(name)
    arch = dict(conf["arch"])
    min_size, max_size = input_size
    if min_size is not None or max_size is not None:
        inp = dict(arch.get("input") or {})
        inp.update({k: v for k, v in (("min_size_test", min_size), ("max_size_test", max_size)) if v})
        arch["input"] = inp
    model = build_glip(GLIPConfig.from_dict(arch))
    path = checkpoint or require_checkpoint(conf)
    if path is not None:
        load_checkpoint(model, path)
    return model.eval(), name


def _class_prompts(model: GLIP, classes: Sequence[str]) -> list[Any]:
    return encode_prompt_chunks(
        list(classes),
        load_tokenizer(model.cfg.language.tokenizer),
        max_query_len=model.cfg.language.max_query_len,
    )


@torch.no_grad()
def detect(
    model: GLIP,
    images: Sequence[str | Path],
    classes: Sequence[str] | None = None,
    artifact: Export | None = None,
    batch_size: int = 1,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Detections per image (original pixels) and the class names their labels index (1-based).

    With a prompt artifact the text features come from the artifact and the model's language
    backbone is not used; otherwise the classes are tokenised and encoded as usual.
    """
    text = None
    if artifact is not None and artifact.mode == "prompt":
        names = artifact.class_names
        label_to_tokens = artifact.label_to_tokens
        prompts = None
    else:
        names = list(classes or (artifact.class_names if artifact is not None else []))
        if not names:
            raise ValueError("give --classes (or a --prompt artifact that names its classes)")
        prompts = _class_prompts(model, names)
    inp = model.cfg.input
    device = next(model.parameters()).device
    results: list[dict[str, Any]] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        pils = [read_image(p) for p in chunk]
        tensors = [ToTensor()(Resize(inp.min_size_test, inp.max_size_test)(im, {})[0], {})[0] for im in pils]
        batch, sizes = batch_images(tensors, inp)
        batch = batch.to(device)
        if prompts is None:
            assert artifact is not None
            text = artifact.text_features(len(chunk), device)
            per_prompt = [model(batch, sizes, text=text, label_to_tokens=label_to_tokens)]
        else:
            per_prompt = []
            for p in prompts:
                ids = p.input_ids[None].expand(len(chunk), -1).to(device)
                mask = p.attention_mask[None].expand(len(chunk), -1).to(device)
                per_prompt.append(
                    model(batch, sizes, text=model.encode_text(ids, mask), label_to_tokens=p.label_to_tokens)
                )
        for i, pil in enumerate(pils):
            dets = [d[i] for d in per_prompt]  # type: ignore[index]
            boxes = torch.cat([d["boxes"] for d in dets]).cpu()
            scores = torch.cat([d["scores"] for d in dets]).cpu()
            labels = torch.cat([d["labels"] for d in dets]).cpu()
            keep = scores.argsort(descending=True, stable=True)[: model.cfg.inference.detections_per_image]
            boxes = resize_boxes(boxes[keep], sizes[i], (pil.height, pil.width))
            results.append(
                {
                    "boxes": boxes,
                    "scores": scores[keep],
                    "labels": labels[keep],
                    "size": (pil.height, pil.width),
                }
            )
    return results, names


def to_coco(
    images: Sequence[str | Path], results: Sequence[dict[str, Any]], names: Sequence[str]
) -> dict[str, Any]:
    """A COCO detection file: boxes as xywh with the +1 convention (w = x2 - x1 + 1), with scores."""
    coco: dict[str, Any] = {
        "images": [],
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)],
        "annotations": [],
    }
    for image_id, (path, res) in enumerate(zip(images, results, strict=True), start=1):
        h, w = res["size"]
        coco["images"].append({"id": image_id, "file_name": str(path), "height": h, "width": w})
        for box, score, label in zip(
            res["boxes"].tolist(), res["scores"].tolist(), res["labels"].tolist(), strict=True
        ):
            x1, y1, x2, y2 = box
            bw, bh = x2 - x1 + 1, y2 - y1 + 1
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": int(label),
                    "bbox": [round(x1, 2), round(y1, 2), round(bw, 2), round(bh, 2)],
                    "area": round(bw * bh, 2),
                    "score": round(float(score), 5),
                    "iscrowd": 0,
                }
            )
    return coco


def draw(path: str | Path, result: dict[str, Any], names: Sequence[str], out: Path, threshold: float) -> Path:
    """The image with its detections above ``threshold`` drawn, saved as JPEG."""
    image = read_image(path)
    canvas = ImageDraw.Draw(image)
    for box, score, label in zip(
        result["boxes"].tolist(), result["scores"].tolist(), result["labels"].tolist(), strict=True
    ):
        if score < threshold:
            continue
        color = COLORS[(int(label) - 1) % len(COLORS)]
        canvas.rectangle(box, outline=color, width=2)
        canvas.text((box[0] + 2, box[1] + 1), f"{names[int(label) - 1]} {score:.2f}", fill=color)
    target = out / f"{Path(path).stem}.jpg"
    image.save(target, quality=90)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m adapt.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", help="image files")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--classes", help='comma-separated class names, e.g. "fish,jellyfish,penguin"')
    which.add_argument("--prompt", help="an exported artifact folder (<run>/export)")
    parser.add_argument(
        "--model", help="model config name (conf/model/); default: the artifact's, else glip_t"
    )
    parser.add_argument("--checkpoint", help="weights file instead of the model's official checkpoint")
    parser.add_argument("--out", default="predictions", help="output folder (default: predictions)")
    parser.add_argument(
        "--threshold", type=float, default=0.3, help="score threshold for drawing (default 0.3)"
    )
    parser.add_argument("--min-size", type=int, help="short side of the resized image (default: the model's)")
    parser.add_argument(
        "--max-size", type=int, help="long-side cap of the resized image (default: the model's)"
    )
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    try:
        artifact = load_export(args.prompt) if args.prompt else None
        name = args.model or (artifact.config["base_model"]["name"] if artifact is not None else "glip_t")
        model, _ = build_model(name, args.checkpoint, (args.min_size, args.max_size))
        if artifact is not None:
            artifact.check_model(model)
            if artifact.mode == "prompt":
                model.language_backbone = None  # type: ignore[assignment]  # not needed: embeddings are stored
            else:
                artifact.apply(model)
        model.to(args.device).eval()
        classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
        results, names = detect(model, args.images, classes, artifact, args.batch_size)
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"adapt.predict: error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(to_coco(args.images, results, names), out / "detections.json", indent=1)
    for path, res in zip(args.images, results, strict=True):
        draw(path, res, names, out, args.threshold)
    total = sum(len(r["scores"]) for r in results)
    print(f"{total} detections in {len(results)} images -> {out / 'detections.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
