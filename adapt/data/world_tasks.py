"""Detection tasks on parts of the generated world, written as COCO files on first use.

Why: the held-out parts of ``adapt.data.world`` only mean something as tasks that adapt's usual
pipeline runs (``task=world/...``: zero-shot, prompt tuning, linear probe, full fine-tuning,
LoRA), so they are plain COCO datasets, generated deterministically into adapt's cache the first
time a run needs them (``adapt.download.require_dataset``) instead of being shipped.

Datasets (each a train, val and test split; every image holds 1 to 3 objects of the classes and
0 to 3 distractors, half of which share a word with a class, so a class is told apart by its
whole name):

* ``objects``: seen colour-shape pairs ("red circle", ...). ``task=world/seen`` names them with
  seen words; ``task=world/synonyms`` renames them with held-out synonyms ("crimson disk").
* ``combos``: the colour-shape pairs held out of pretraining, named with seen words.
* ``novel``: the shapes never drawn nor named in pretraining ("heart", "crescent", "arrow"), in
  any colour.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from adapt.atomic import write_json
from adapt.data.errors import DataError
from adapt.data.io import read_json
from adapt.data.world import (
    COLOURS,
    HELD_OUT_COMBOS,
    NOVEL_SHAPES,
    SEEN_COMBOS,
    SIZES,
    TEXTURES,
    WORLD_VERSION,
    Spec,
    render_scene,
    rng_for,
)

MARKER = "world.json"
Combo = tuple[str | None, str]  # (colour, shape); colour None: any colour


@dataclass(frozen=True)
class WorldDataset:
    """One generated dataset: its classes, the distractors drawn beside them, and split sizes."""

    name: str
    classes: tuple[Combo, ...]
    distractors: tuple[Combo, ...]
    splits: dict[str, int] = field(default_factory=lambda: {"train": 120, "val": 60, "test": 100})

    @property
    def category_names(self) -> list[str]:
        return [f"{c} {s}" if c else s for c, s in self.classes]


_OBJECTS = (("red", "circle"), ("blue", "square"), ("yellow", "triangle"), ("green", "ring"))
DATASETS: dict[str, WorldDataset] = {
    "objects": WorldDataset("objects", _OBJECTS, tuple(c for c in SEEN_COMBOS if c not in _OBJECTS)),
    "combos": WorldDataset("combos", HELD_OUT_COMBOS, SEEN_COMBOS),
    "novel": WorldDataset("novel", tuple((None, s) for s in NOVEL_SHAPES), SEEN_COMBOS),
}


def _spec(combo: Combo, rng: random.Random) -> Spec:
    colour, kind = combo
    return Spec(kind, colour or rng.choice(list(COLOURS)), rng.choice(list(SIZES)), rng.choice(TEXTURES))


def _distractor(dataset: WorldDataset, rng: random.Random) -> Combo:
    """Half the time a pair sharing its colour or shape with a class: the hard negatives."""
    if rng.random() < 0.5:
        near = [
            d
            for d in dataset.distractors
            if any(d[1] == s or (c is not None and d[0] == c) for c, s in dataset.classes)
        ]
        if near:
            return rng.choice(near)
    return rng.choice(list(dataset.distractors))


def split_coco(
    dataset: WorldDataset, split: str, image_dir: Path | None
) -> dict[str, list[dict[str, object]]]:
    """The COCO dict of one split; with ``image_dir``, its PNG images are written there too."""
    names = dataset.category_names
    coco: dict[str, list[dict[str, object]]] = {
        "images": [],
        "annotations": [],
        "categories": [{"id": i + 1, "name": n, "supercategory": "world"} for i, n in enumerate(names)],
    }
    offset = {"train": 0, "val": 100_000, "test": 200_000}[split]
    for index in range(dataset.splits[split]):
        rng = rng_for("task", dataset.name, split, index)
        wanted = [rng.randrange(len(dataset.classes)) for _ in range(rng.randint(1, 3))]
        specs = [_spec(dataset.classes[k], rng) for k in wanted]
        specs += [_spec(_distractor(dataset, rng), rng) for _ in range(rng.randint(0, 3))]
        order = list(range(len(specs)))
        rng.shuffle(order)
        image, things = render_scene([specs[k] for k in order], rng)
        image_id = offset + index + 1
        file_name = f"{split}_{index:04d}.png"
        if image_dir is not None:
            image.save(image_dir / file_name)
        coco["images"].append(
            {"id": image_id, "file_name": file_name, "width": image.width, "height": image.height}
        )
        for thing in things:
            label = next(
                (
                    k
                    for k, (c, s) in enumerate(dataset.classes)
                    if s == thing.kind and c in (None, thing.colour)
                ),
                None,
            )
            if label is None:
                continue  # a distractor, or a tree of a tile background: not a class of this task
            x, y, w, h = thing.box
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1 + offset,
                    "image_id": image_id,
                    "category_id": label + 1,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    return coco


def ensure_dataset(name: str, root: str | os.PathLike[str]) -> Path:
    """The generated dataset ``name`` under ``root``, written there (atomically) if absent.

    Concurrent first uses (a sweep's jobs) each write a private folder and rename it into place;
    the first rename wins and the others are discarded, so nobody reads a half-written dataset.
    """
    if name not in DATASETS:
        raise DataError(f"task.world: unknown generated dataset {name!r}; known: {sorted(DATASETS)}")
    root = Path(root)
    marker = root / MARKER
    if marker.is_file():
        recorded = read_json(marker)
        if recorded.get("dataset") != name or recorded.get("world_version") != WORLD_VERSION:
            raise DataError(
                f"{root}: holds world dataset {recorded.get('dataset')!r} version "
                f"{recorded.get('world_version')}, not {name!r} version {WORLD_VERSION}; delete the folder "
                "to generate it again"
            )
        return root
    dataset = DATASETS[name]
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        (staging / "images").mkdir()
        for split in dataset.splits:
            write_json(
                split_coco(dataset, split, staging / "images"),
                staging / "annotations" / f"{split}.json",
                None,
            )
        write_json(
            {
                "dataset": name,
                "world_version": WORLD_VERSION,
                "classes": dataset.category_names,
                "splits": dataset.splits,
            },
            staging / MARKER,
        )
        try:
            staging.rename(root)
        except OSError:
            if not (root / MARKER).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root
