"""How far adapt's family path is from transformers' own pipeline: the maxima the tests bound.

For each mini config (random weights, seeded noise images of three sizes): detections against
processor + model + ``post_process_grounded_object_detection`` (threshold 0: every query), the loss
against transformers' (Grounding DINO: the model's own loss; OWLv2: Deformable DETR's loss on
transformers' outputs), one image alone against the same image in a batch of four sizes, and a zero
prompt offset (live, and exported with the text encoder dropped) against zero-shot.

    PYTHONPATH=. python benchmarks/families_equality.py
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from transformers.loss.loss_deformable_detr import DeformableDetrForObjectDetectionLoss

from adapt.families.exports import apply_export, prompt_tensors
from adapt.families.owlv2 import DEFAULT_LOSS
from adapt.markdown import md_table
from tests.families.conftest import ALL, CLASSES, by_score, family, image, transformers_detections

SIZES = [(48, 80), (96, 60), (60, 100), (70, 70)]
TARGETS = [
    {
        "boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [40.0, 10.0, 70.0, 30.0]]),
        "labels": torch.tensor([1, 3]),
    },
    {"boxes": torch.tensor([[10.0, 20.0, 50.0, 90.0]]), "labels": torch.tensor([2])},
]


def detection_gap(fam) -> tuple[float, float]:
    boxes, scores = 0.0, 0.0
    for seed, size in enumerate(SIZES[:3]):
        img = image(seed, size)
        s_ref, b_ref = by_score(transformers_detections(fam, img, CLASSES, threshold=0.0))
        s_ours, b_ours = by_score(fam.detect([img], CLASSES)[0])
        boxes = max(boxes, float((b_ours - b_ref).abs().max()))
        scores = max(scores, float((s_ours - s_ref).abs().max()))
    return boxes, scores


def loss_gap(fam) -> float:
    imgs = [image(0, SIZES[0]), image(1, SIZES[1])]
    prompt = fam.encode_prompt(CLASSES)
    batch = fam.preprocess(imgs, together=True)[0]
    ours = fam(batch, prompt, targets=TARGETS)
    labels = fam.loss_targets(TARGETS, prompt, batch.sizes)
    if fam.name == "owlv2":
        out = fam.hf(**fam.processor(text=[CLASSES] * 2, images=imgs, return_tensors="pt"))
        config = SimpleNamespace(num_labels=len(CLASSES), auxiliary_loss=False, **DEFAULT_LOSS)
        total, terms, _ = DeformableDetrForObjectDetectionLoss(
            out.logits, labels, "cpu", out.pred_boxes, config
        )
    else:
        out = fam.hf(
            **fam.processor(images=imgs, text=[prompt.caption] * 2, return_tensors="pt"), labels=labels
        )
        total, terms = out.loss, out.loss_dict
    pairs = [(ours[k], v) for k, v in terms.items()] + [(ours["total"], total)]
    return max(abs(float(a.detach() - b.detach())) / max(1.0, abs(float(b.detach()))) for a, b in pairs)


def batch_gap(fam) -> float:
    imgs = [image(seed, size) for seed, size in enumerate(SIZES)]
    together = fam.detect(imgs, CLASSES, batch_size=4)
    return max(
        float((fam.detect([img], CLASSES)[0]["scores"] - together[i]["scores"]).abs().max())
        for i, img in enumerate(imgs)
    )


def transformers_batch_gap(fam) -> float:
    """The same in transformers' own batch (padded to the largest image), for contrast."""
    imgs = [image(seed, size) for seed, size in enumerate(SIZES)]
    if fam.name == "owlv2":
        batch = fam.processor(text=[CLASSES] * 4, images=imgs, return_tensors="pt")
        alone = fam.processor(text=[CLASSES], images=imgs[:1], return_tensors="pt")
    else:
        caption = fam.encode_prompt(CLASSES).caption
        batch = fam.processor(images=imgs, text=[caption] * 4, return_tensors="pt")
        alone = fam.processor(images=imgs[:1], text=[caption], return_tensors="pt")
    a, b = fam.hf(**alone).logits[0].sigmoid(), fam.hf(**batch).logits[0].sigmoid()
    return float((a.max(-1).values.sort().values - b.max(-1).values.sort().values).abs().max())


def offset_gap(name: str) -> float:
    fam = family(name, threshold=0.0)
    imgs = [image(0, SIZES[0])]
    zero_shot = fam.detect(imgs, CLASSES)[0]["scores"]
    prompt = fam.encode_prompt(CLASSES)
    fam.enable_prompt_tuning(prompt)
    live = fam.detect(imgs, CLASSES)[0]["scores"]
    fresh = family(name, threshold=0.0)
    text = apply_export(fresh, "prompt", prompt_tensors(fam, prompt))
    exported = fresh.detect(imgs, prompts=[prompt], text=text)[0]["scores"]
    return max(float((live - zero_shot).abs().max()), float((exported - zero_shot).abs().max()))


@torch.no_grad()
def main() -> None:
    rows = []
    for name in ALL:
        fam = family(name, threshold=0.0)
        boxes, scores = detection_gap(fam)
        with torch.enable_grad():
            loss = loss_gap(fam)
        rows.append(
            [
                name,
                f"{boxes:.2e}",
                f"{scores:.2e}",
                f"{loss:.2e}",
                f"{batch_gap(fam):.2e}",
                f"{transformers_batch_gap(fam):.2e}",
                f"{offset_gap(name):.1e}",
            ]
        )
    header = [
        "model",
        "boxes (px)",
        "scores",
        "loss (relative)",
        "alone vs batch of 4 (scores)",
        "same, transformers' padded batch",
        "zero offset vs zero-shot",
    ]
    print("\n".join(md_table(header, rows)))


if __name__ == "__main__":
    main()
