"""Task configs (ODinW-13 against the spec, coco, demo) and the few-shot protocol of Task.dataset."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from adapt.data import DataError, DataWarning, build_task
from adapt.download import CONF_DIR, load_config
from adapt.prompt import CaptionPrompt
from tests.data.conftest import random_images, write_coco

VOC = [
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
]

# glip_spec.md 4.1: option -> (paper name, hub zip, folder under odinw/, categories, val folder, test folder)
SPEC = {
    "pascalvoc": ("PascalVOC", "PascalVOC", "PascalVOC", VOC, "valid", "valid"),
    "aerial_drone": (
        "AerialDrone",
        "AerialMaritimeDrone",
        "AerialMaritimeDrone/large",
        ["boat", "car", "dock", "jetski", "lift"],
        "valid",
        "test",
    ),
    "aquarium": (
        "Aquarium",
        "Aquarium",
        "Aquarium/Aquarium Combined.v2-raw-1024.coco",
        ["fish", "jellyfish", "penguin", "puffin", "shark", "starfish", "stingray"],
        "valid",
        "test",
    ),
    "rabbits": ("Rabbits", "CottontailRabbits", "CottontailRabbits", ["Cottontail-Rabbit"], "valid", "test"),
    "egohands": ("EgoHands", "EgoHands", "EgoHands/generic", ["hand"], "mini_val", "test"),
    "mushrooms": (
        "Mushrooms",
        "NorthAmericaMushrooms",
        "NorthAmericaMushrooms/North American Mushrooms.v1-416x416.coco",
        ["CoW", "chanterelle"],
        "valid",
        "test",
    ),
    "packages": ("Packages", "Packages", "Packages/Raw", ["package"], "valid", "test"),
    "raccoon": ("Raccoon", "Raccoon", "Raccoon/Raccoon.v2-raw.coco", ["raccoon"], "valid", "test"),
    "shellfish": (
        "Shellfish",
        "ShellfishOpenImages",
        "ShellfishOpenImages/raw",
        ["Crab", "Lobster", "Shrimp"],
        "valid",
        "test",
    ),
    "vehicles": (
        "Vehicles",
        "VehiclesOpenImages",
        "VehiclesOpenImages/416x416",
        ["Ambulance", "Bus", "Car", "Motorcycle", "Truck"],
        "mini_val",
        "test",
    ),
    "pistols": ("Pistols", "pistols", "pistols/export", ["pistol"], ".", "."),
    "pothole": ("Pothole", "pothole", "pothole", ["pothole"], "valid", "test"),
    "thermal": (
        "Thermal",
        "thermalDogsAndPeople",
        "thermalDogsAndPeople",
        ["dog", "person"],
        "valid",
        "test",
    ),
}

# glip_spec.md 4.2 (paper Table 10): the manual prompts; every other dataset keeps its raw names
MANUAL = {
    "aquarium": (
        ["fish", "jellyfish", "penguin", "puffin", "shark", "starfish", "stingray"],
        [
            CaptionPrompt(" ", "fish", ""),
            CaptionPrompt("", "jellyfish", ""),
            CaptionPrompt("", "penguin", " , which is black and white"),
            CaptionPrompt("", "puffin", " with orange beaks "),
            CaptionPrompt("", "shark", ""),
            CaptionPrompt("", "starfish", ""),
            CaptionPrompt("", "stingray", " which is flat and round"),
        ],
    ),
    "rabbits": (["rabbit"], None),
    "egohands": (["hand"], [CaptionPrompt(" ", "hand", " of a person")]),
    "mushrooms": (["flat mushroom", "yellow mushroom"], None),
    "packages": (["package"], [CaptionPrompt("there is a ", "package", " on the porch")]),
    "pothole": (["pothole"], [CaptionPrompt("there are some ", "holes", " on the road")]),
}


def test_the_13_odinw_configs_are_shipped():
    assert sorted(p.stem for p in (CONF_DIR / "task" / "odinw").glob("*.yaml")) == sorted(SPEC)


@pytest.mark.parametrize("option", sorted(SPEC))
def test_odinw_config_matches_spec(option, tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPT_CACHE", str(tmp_path))
    name, hub, folder, cats, val_dir, test_dir = SPEC[option]
    cfg = load_config("task", f"odinw/{option}")
    assert cfg.id == f"odinw/{option}" and cfg.name == name
    assert cfg.hub_file == f"odinw_35/{hub}.zip"
    task = build_task(cfg)
    root = tmp_path / "datasets" / "odinw" / folder
    assert task.data_root == root
    assert task.raw_names == cats and task.category_ids == list(range(1, len(cats) + 1))
    ann = "annotations_without_background.json"
    if option == "pistols":  # one folder, three json files
        assert task.splits["train"].json == root / f"train_{ann}" and task.splits["train"].image_dir == root
        assert (
            task.splits["val"].json == root / f"val_{ann}"
            and task.splits["test"].json == root / f"test_{ann}"
        )
        assert task.splits["val"].image_dir == task.splits["test"].image_dir == root
        assert task.fewshot_files == {
            "train": "fewshot_train_shot{shots}_seed{seed}.json",
            "val": "fewshot_val_shot{shots}_seed{seed}.json",
        }
    else:
        for split, sub in (("train", "train"), ("val", val_dir), ("test", test_dir)):
            assert task.splits[split].json == root / sub / ann
            assert task.splits[split].image_dir == root / sub
        assert task.fewshot_files == {
            "train": "train/fewshot_train_shot{shots}_seed{seed}.json",
            "val": "valid/fewshot_val_shot{shots}_seed{seed}.json",
        }
    names, prompts = MANUAL.get(option, (cats, None))
    assert task.class_names == names and task.caption_prompts == prompts
    raw = build_task(load_config("task", f"odinw/{option}", ["task.prompts=raw"]))
    assert raw.class_names == cats and raw.caption_prompts is None


def _with_config(overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def test_full_config_places_odinw_under_cache_dir(tmp_path):
    cfg = _with_config(["task=odinw/raccoon", f"cache_dir={tmp_path}"])
    assert build_task(cfg.task).data_root == tmp_path / "datasets/odinw/Raccoon/Raccoon.v2-raw.coco"


def _odinw_like(tmp_path: Path) -> Path:
    """A tiny dataset in the official ODinW layout, with prepared 1-shot seed-3 files."""
    root = tmp_path / "odinw" / "Pets" / "raw"
    for split, seed in (("train", 0), ("valid", 1), ("test", 2)):
        write_coco(
            root / split,
            "annotations_without_background.json",
            random_images(30, 2, seed, split),
            background=False,
        )
    prepared = json.loads((root / "train" / "annotations_without_background.json").read_text())
    keep = {prepared["images"][i]["id"] for i in (0, 1, 2, 3, 4, 5, 6, 7)}
    prepared["images"] = [i for i in prepared["images"] if i["id"] in keep]
    prepared["annotations"] = [a for a in prepared["annotations"] if a["image_id"] in keep]
    (root / "train" / "fewshot_train_shot1_seed3.json").write_text(json.dumps(prepared))
    return root


def _pets_cfg(root: Path, **extra):
    cfg = {
        "id": "odinw/pets",
        "name": "Pets",
        "data_root": str(root),
        "train_json": "train/annotations_without_background.json",
        "train_image_dir": "train",
        "val_json": "valid/annotations_without_background.json",
        "val_image_dir": "valid",
        "test_json": "test/annotations_without_background.json",
        "test_image_dir": "test",
        "fewshot_train_json": "train/fewshot_train_shot{shots}_seed{seed}.json",
        "fewshot_val_json": "valid/fewshot_val_shot{shots}_seed{seed}.json",
        "categories": ["cat", "dog"],
    }
    return cfg | extra


def test_prepared_files_are_used_when_present_else_sampled(tmp_path):
    task = build_task(_pets_cfg(_odinw_like(tmp_path)))
    prepared = task.dataset("train", shots=1, seed=3)
    assert prepared.ann_file.name == "fewshot_train_shot1_seed3.json" and len(prepared.coco.imgs) == 8
    assert "official prepared" in task.split_source("train", 1, 3)
    sampled = task.dataset("train", shots=1, seed=30)  # no prepared file for seed 30
    assert "sampled" in task.split_source("train", 1, 30)
    counts = {c: len(sampled.coco.getImgIds(catIds=[c])) for c in (1, 2)}
    assert all(n >= 1 for n in counts.values()) and len(sampled.coco.imgs) < 30
    assert [i for i in sampled.ids] == [i for i in task.dataset("train", shots=1, seed=30).ids]
    # val: K-shot with the same rule and seed when no prepared val file exists
    val = task.dataset("val", shots=3, seed=3)
    assert all(len(val.coco.getImgIds(catIds=[c])) >= 3 for c in (1, 2)) and len(val.coco.imgs) < 30
    assert len(task.dataset("val", shots="all").coco.imgs) == 30
    assert len(task.dataset("val", shots=0).coco.imgs) == 30
    assert len(task.dataset("test", shots=1, seed=3).coco.imgs) == 30  # test is always whole
    with pytest.raises(ValueError, match="shots=0 is zero-shot"):
        task.dataset("train", shots=0)
    full = task.dataset("train", shots="all")
    assert len(full) == sum(1 for i in full.coco.imgs if full.coco.imgToAnns[i])  # unannotated images dropped


def test_config_category_mismatch_names_the_file(tmp_path):
    task = build_task(_pets_cfg(_odinw_like(tmp_path), categories=["cat", "wolf"]))
    with pytest.raises(
        DataError, match=r"annotations_without_background.json: category names \['cat', 'dog'\]"
    ):
        task.dataset("val")


def test_unknown_rename_is_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"unknown categories \['cow'\]"):
        build_task(_pets_cfg(tmp_path, renames={"cow": "cattle"}))


def test_coco_task_from_overrides_with_roboflow_background(tmp_path):
    root = tmp_path / "export"
    for split, seed in (("train", 0), ("valid", 1)):
        write_coco(root / "images", f"{split}.json", random_images(20, 2, seed, split), background=True)
        shutil.move(root / "images" / f"{split}.json", root / f"{split}.json")
    cfg = _with_config(
        [
            "task=coco",
            f"task.data_root={root}",
            "task.image_dir=images",
            "task.train_json=train.json",
            "task.val_json=valid.json",
            "task.renames={dog: puppy}",
            "task.caption_prompts={cat: {prefix: 'a ', suffix: ' on a sofa'}}",
        ]
    )
    task = build_task(cfg.task)
    assert task.raw_names == ["cat", "dog"] and task.category_ids == [1, 2]  # background 0 dropped
    assert task.class_names == ["cat", "puppy"]
    assert task.caption_prompts == [CaptionPrompt("a ", None, " on a sofa"), None]
    assert task.splits["test"] == task.splits["val"]  # no test_json: test on val
    image, target = task.dataset("train", shots=2, seed=3)[0]
    assert image.shape[0] == 3 and target["labels"].min() >= 1
    assert 0 not in task.dataset("test").coco.getCatIds()


def test_coco_task_without_data_root_says_which_key(tmp_path):
    cfg = _with_config(["task=coco"])
    with pytest.raises(DataError, match=r"task.data_root must be set"):
        build_task(cfg.task)


def test_demo_task_ships_real_tree_tiles():
    cfg = _with_config([])
    assert cfg.task.id == "demo"
    task = build_task(cfg.task)
    assert task.class_names == ["tree"] and task.caption_prompts is None
    assert (task.data_root / "annotations" / "train.json").is_file()
    for split in ("train", "val", "test"):
        ds = task.dataset(split)
        image, target = ds[0]
        assert image.dtype == torch.float32 and image.min() >= 0.0 and image.max() <= 1.0
        h, w = target["size"]
        assert image.shape[1:] == (h, w) and len(target["boxes"]) > 0
        assert (target["boxes"][:, 2] <= w - 1).all() and (target["boxes"][:, 3] <= h - 1).all()
        if split != "train":
            assert min(h, w) == 800
    one_shot = task.dataset("train", shots=1, seed=3)
    assert 1 <= len(one_shot) < len(task.dataset("train"))


def test_demo_categories_warn_when_absent(tmp_path):
    root = tmp_path / "d"
    write_coco(root, "t.json", [{"file": "a.png", "boxes": [(1, 0, 0, 9, 9)]}])
    task = build_task({"id": "x", "data_root": str(root), "train_json": "t.json", "val_json": "t.json"})
    with pytest.warns(DataWarning, match="no example of dog"):
        task.dataset("val")
