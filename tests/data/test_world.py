"""The generated grounding world: determinism, captions that say exactly what the boxes are, and
held-out words, shapes and pairs that really stay out of pretraining."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from PIL import Image

from adapt.data import world, world_tasks
from adapt.data.world import (
    COLOURS,
    COUNTS,
    HELD_OUT_COMBOS,
    IMAGE_SIZE,
    MANY,
    NOVEL_SHAPES,
    PLURALS,
    SIZES,
    SYNONYMS,
    TEXTURES,
    TREE,
    Description,
    pretraining_scene,
)
from adapt.prompt import load_tokenizer

ROOT = Path(__file__).resolve().parents[2]
SCENES = 60
SINGULAR = {plural: noun for noun, plural in PLURALS.items()}


def parse(text: str) -> tuple[Description, bool]:
    """A phrase back to what it says (and whether it is plural), independently of world.describe."""
    *words, noun = text.split()
    plural = noun in SINGULAR
    kind = SINGULAR.get(noun, noun)
    values: dict[str, str] = {}
    for word in words:
        slot = (
            "colour"
            if word in COLOURS
            else "size"
            if word in SIZES
            else "texture"
            if word in TEXTURES
            else None
        )
        assert slot is not None and slot not in values, f"unexpected word {word!r} in phrase {text!r}"
        values[slot] = word
    return Description(kind, **values), plural


# SHA-256 of the grounding records (captions, spans, boxes) of pretraining scenes 0..19, seed 0, at
# WORLD_VERSION 1. A change of the world must bump WORLD_VERSION (cached task data is keyed by it)
# and this digest, and means pretraining again.
RECORDS_SHA256 = "70f031917c6d7863b2a25599d3954454d0f990b3977e180db5342fc1cc3be8d8"


def test_the_world_is_the_one_recorded():
    """The same captions and boxes as when glip_mini_pretrained was trained (pure-Python RNG, so
    independent of the Pillow version; the pixels are checked across processes below)."""
    digest = hashlib.sha256()
    for i in range(20):
        digest.update(json.dumps(pretraining_scene(0, i).grounding_record(), sort_keys=True).encode())
    assert (world.WORLD_VERSION, digest.hexdigest()) == (1, RECORDS_SHA256)


@pytest.mark.slow  # a second Python process importing torch: seconds on a quiet machine
def test_scenes_are_identical_in_another_process(tmp_path):
    """Same pixels, boxes and caption from the seed alone (no hash randomisation, no global RNG):
    ``python -m adapt.data.world`` in another process writes what this one draws."""
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "adapt.data.world", str(tmp_path), "--seed", "7", "--count", "3"]
    subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    records = json.loads((tmp_path / "grounding.json").read_text())
    for i, record in enumerate(records):
        scene = pretraining_scene(7, i)
        assert record == {"file_name": f"scene_7_{i:05d}.png", **scene.grounding_record()}
        with Image.open(tmp_path / record["file_name"]) as written:
            assert written.tobytes() == scene.image.tobytes()
    assert pretraining_scene(8, 0).image.tobytes() != pretraining_scene(7, 0).image.tobytes()  # seed counts


def test_every_phrase_grounds_exactly_the_objects_it_describes():
    for index in range(SCENES):
        scene = pretraining_scene(0, index)
        assert scene.image.size == (IMAGE_SIZE, IMAGE_SIZE)
        covered: set[int] = set()
        for phrase in scene.phrases:
            text = scene.phrase_text(phrase)
            desc, plural = parse(text)
            described = tuple(i for i, thing in enumerate(scene.objects) if desc.matches(thing))
            assert phrase.objects == described, (scene.caption, text)
            before = scene.caption[: phrase.start].split()
            if before and before[-1] in (*COUNTS.values(), MANY):  # a sentence: its count is right
                assert before[-1] == COUNTS.get(len(described), MANY), (scene.caption, text)
                assert plural == (len(described) > 1), (scene.caption, text)
            else:  # a detection-style list: singular nouns, as a task's prompt has them
                assert not plural, (scene.caption, text)
            covered.update(described)
        assert covered == set(range(len(scene.objects))), f"an object no phrase names: {scene.caption!r}"
        spans = sorted((p.start, p.end) for p in scene.phrases)
        assert all(a[1] < b[0] for a, b in itertools.pairwise(spans)), scene.caption
        for thing in scene.objects:
            x, y, w, h = thing.box
            assert x >= 0 and y >= 0 and x + w <= IMAGE_SIZE and y + h <= IMAGE_SIZE and w >= 4 and h >= 4


def test_held_out_parts_never_reach_pretraining():
    """Words: by construction (a closed vocabulary whose tokens the held-out words share none of);
    shapes and pairs: in the scenes drawn."""
    tokenizer = load_tokenizer()
    seen_tokens = {t for word in world.vocabulary() for t in tokenizer.tokenize(word)}
    held_out = list(SYNONYMS.values()) + list(NOVEL_SHAPES)
    for word in held_out:
        assert word not in world.vocabulary()
        assert not set(tokenizer.tokenize(word)) & seen_tokens, word
    for index in range(SCENES):
        scene = pretraining_scene(0, index)
        words = set(scene.caption.replace(",", " ").replace(".", " ").split())
        assert words <= world.vocabulary(), scene.caption
        for thing in scene.objects:
            assert thing.kind in (*world.SHAPES, TREE)
            assert (thing.colour, thing.kind) not in HELD_OUT_COMBOS
        for phrase in scene.phrases:
            desc, _ = parse(scene.phrase_text(phrase))
            assert (desc.colour, desc.kind) not in HELD_OUT_COMBOS


def test_task_configs_name_the_held_out_parts():
    """The task yamls and the world agree: synonyms are SYNONYMS of seen words, novel shapes and
    held-out pairs are the world's, and each task's classes are its generated dataset's."""
    conf = ROOT / "adapt" / "conf" / "task" / "world"
    tasks = {p.stem: OmegaConf.to_container(OmegaConf.load(p)) for p in conf.glob("*.yaml")}
    assert set(tasks) == {"seen", "synonyms", "combos", "novel"}
    for task in tasks.values():
        assert task["categories"] == world_tasks.DATASETS[task["world"]].category_names
        assert task["data_root"].endswith(f"/{task['world']}-v{world.WORLD_VERSION}")
    seen = tasks["seen"]["categories"]
    assert all(tuple(name.split()) not in HELD_OUT_COMBOS for name in seen)
    renames = tasks["synonyms"]["renames"]
    assert [renames[n] for n in seen] == [" ".join(SYNONYMS[w] for w in n.split()) for n in seen]
    assert [tuple(n.split()) for n in tasks["combos"]["categories"]] == list(HELD_OUT_COMBOS)
    assert tuple(tasks["novel"]["categories"]) == NOVEL_SHAPES


def test_task_splits_are_deterministic_and_label_only_their_classes(tmp_path):
    dataset = world_tasks.WorldDataset(
        "novel", world_tasks.DATASETS["novel"].classes, world_tasks.DATASETS["novel"].distractors, {"test": 6}
    )
    a = world_tasks.split_coco(dataset, "test", tmp_path)
    assert a == world_tasks.split_coco(dataset, "test", None)
    assert [c["name"] for c in a["categories"]] == list(NOVEL_SHAPES)
    assert {im["id"] for im in a["images"]} >= {ann["image_id"] for ann in a["annotations"]}
    assert len({ann["id"] for ann in a["annotations"]}) == len(a["annotations"])
    assert {ann["image_id"] for ann in a["annotations"]} == {
        im["id"] for im in a["images"]
    }  # every image has one
    assert len(list(tmp_path.glob("test_*.png"))) == 6


def test_ensure_dataset_writes_once_and_refuses_a_stale_folder(tmp_path, monkeypatch):
    small = world_tasks.WorldDataset(
        "objects",
        world_tasks.DATASETS["objects"].classes,
        world_tasks.DATASETS["objects"].distractors,
        {"train": 3, "val": 2, "test": 2},
    )
    monkeypatch.setitem(world_tasks.DATASETS, "objects", small)
    root = tmp_path / "objects-v1"
    assert world_tasks.ensure_dataset("objects", root) == root
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert files[:4] == [
        "annotations/test.json",
        "annotations/train.json",
        "annotations/val.json",
        "images/test_0000.png",
    ]
    stamp = (root / "annotations" / "train.json").stat().st_mtime_ns
    world_tasks.ensure_dataset("objects", root)  # present: not written again
    assert (root / "annotations" / "train.json").stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left
    with pytest.raises(world_tasks.DataError, match="holds world dataset 'objects'"):
        world_tasks.ensure_dataset("novel", root)
    with pytest.raises(world_tasks.DataError, match="unknown generated dataset"):
        world_tasks.ensure_dataset("nothing", tmp_path / "x")
