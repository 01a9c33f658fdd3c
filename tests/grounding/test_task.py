"""Grounding as a task: configs, few-shot images, targets, collate, the evaluator's round trip.

On the fixtures of conftest.py (real formats, written by the tests). The round trip is worked out
by hand: the test split's captions with phrases to score are 1001/0 ("Two men" A+B, "red shirts"
S), 1001/1 ("a man" A+B, "a dog" D, "a man" A+B), 1001/3 ("A field" F, "a shirt" S) and 1002/0
("A child" C1+C2, one training target C2): 8 phrases. Predicting each phrase's training boxes
finds every phrase at 1 with any-box; with merged-box, the two-box people phrases ("Two men",
"a man" twice) miss: A against the union (10, 10, 80, 50) has IoU 800 / 2800 < 0.5, and so does B;
"A child"'s C2 against the union C1 has IoU 0.99. Merged-box R@1 = 5 / 8 = 62.5.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from adapt.config import compose_config
from adapt.data import build_task
from adapt.data.errors import DataError, DataWarning
from adapt.data.grounding import CaptionTooLongError, encode_grounding
from adapt.data.grounding_task import GroundingTask, without_flip
from adapt.data.transforms import Compose, RandomHorizontalFlip, build_transforms, transforms_from_config
from adapt.metrics.grounding import evaluate_flickr
from adapt.metrics.refexp import precision_at_k
from adapt.prompt import load_tokenizer
from adapt.runs.grounding import prediction_entries
from adapt.train.grounding import GroundingCollate
from tests.grounding.conftest import FLICKR, MDETR_FLICKR, MDETR_REFCOCO, write_flickr, write_json

TINY = {"min_size_train": [96], "max_size_train": 128, "min_size_test": 96, "max_size_test": 128}


def task_of(*overrides: str) -> GroundingTask:
    task = build_task(compose_config(list(overrides)).task)
    assert isinstance(task, GroundingTask)
    return task


@pytest.fixture
def flickr_task(flickr_root: Path) -> GroundingTask:
    return task_of("task=flickr30k", f"task.data_root={flickr_root}")


def test_build_task_dispatches_on_the_type_key(flickr_root, tmp_path):
    task = task_of("task=flickr30k", f"task.data_root={flickr_root}")
    assert (task.format, task.metric, task.val_metric, task.max_boxes) == (
        "flickr",
        "flickr",
        "any_box.R@1",
        100,
    )
    assert task.image_dirs["test"] == flickr_root / "flickr30k-images"
    refcoco = task_of("task=refcoco", f"task.data_root={tmp_path}")
    assert (refcoco.format, refcoco.metric, refcoco.val_metric) == ("mdetr", "refexp", "P@1")
    assert refcoco.files["test"] == tmp_path / "finetune_refcoco_testA.json"
    with pytest.raises(ValueError, match=r"task.val_metric='ap' is not a flickr metric key"):
        task_of("task=flickr30k", f"task.data_root={flickr_root}", "task.val_metric=ap")
    assert not isinstance(build_task(compose_config(["task=demo"]).task), GroundingTask)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["task=flickr30k", "task.data_root={tmp}/nowhere"],
            r"not found at .*nowhere: download annotations.zip",
        ),
        (
            ["task=flickr30k", "task.data_root={flickr}", "task.image_dir={tmp}/no_images"],
            r"Flickr30K webpage",
        ),
        (
            ["task=mdetr_flickr", "task.data_root={tmp}"],
            r"final_flickr_separateGT_test.json not found: .*zenodo",
        ),
        (["task=refcoco", "task.data_root={mdetr}", "task.image_dir={tmp}/coco"], r"train2014.zip"),
    ],
    ids=["flickr-annotations", "flickr-images", "mdetr-annotations", "coco-images"],
)
def test_a_missing_folder_is_one_sentence_on_how_to_get_the_data(
    tmp_path, flickr_root, refcoco_file, overrides, message
):
    for split in ("train", "val", "testA"):
        write_json(refcoco_file.parent / f"finetune_refcoco_{split}.json", MDETR_REFCOCO)
    names = {"tmp": tmp_path, "flickr": flickr_root, "mdetr": refcoco_file.parent}
    task = task_of(*(o.format(**names) for o in overrides))
    with pytest.raises(DataError, match=message) as info:
        task.check_files()
    assert "\n" not in str(info.value)


def test_shots_are_images_with_all_their_captions_drawn_with_the_seed(flickr_task):
    def images(seed: int) -> list[tuple[str, int]]:
        return [(s.image_id, s.sentence_id) for s in flickr_task.select("test", 1, seed, lambda s: True)]

    drawn = {seed: images(seed) for seed in range(8)}
    assert {tuple(v) for v in drawn.values()} == {
        (("1001", 0), ("1001", 1), ("1001", 2), ("1001", 3)),
        (("1002", 0),),
    }
    assert images(5) == drawn[5]  # the same seed draws the same image
    assert len(flickr_task.select("test", "all", None, lambda s: True)) == 5
    # val with shots=1: one image; test: always whole; captions without a phrase to score dropped
    assert [s.image_id for s in flickr_task.dataset("val", shots=1, seed=3).samples] == ["1002"]
    test = flickr_task.dataset("test", shots=1, seed=3)
    assert [(s.image_id, s.sentence_id) for s in test.samples] == [
        ("1001", 0),
        ("1001", 1),
        ("1001", 3),
        ("1002", 0),
    ]


def test_training_target_boxes_positive_maps_and_tokens(flickr_task):
    dataset = flickr_task.dataset("train", shots=1, seed=3, transforms=None)
    image, target = dataset[0]
    sample = dataset.samples[0]
    assert (sample.image_id, sample.caption) == ("1003", "A woman sits .")
    assert image.shape == (3, 48, 64) and target["orig_size"] == (48, 64)
    assert target["boxes"].tolist() == [[5.0, 5.0, 19.0, 29.0]]  # (5, 5, 20, 30), +1 convention
    encoded = encode_grounding(sample, load_tokenizer())
    assert torch.equal(target["positive_map"], encoded.positive_map)
    assert torch.equal(target["input_ids"], encoded.input_ids) and target["input_ids"].shape == (256,)
    assert target["positive_map"][0].nonzero().flatten().tolist() == [1, 2]  # "a woman"
    assert target["image_id"] == 0 and target["sample"] == 0


def test_no_horizontal_flip_in_training():
    assert not any(
        isinstance(t, RandomHorizontalFlip) for t in without_flip(build_transforms(True)).transforms
    )
    assert isinstance(without_flip(transforms_from_config(TINY, True)), Compose)
    with pytest.raises(ValueError, match="never flipped"):
        without_flip(RandomHorizontalFlip(1.0))


def test_over_long_captions_are_skipped_in_training_and_refused_in_evaluation(tmp_path):
    root = write_flickr(
        tmp_path / "f", FLICKR, {"train": ["1001", "1002", "1003"], "val": ["1001"], "test": ["1001"]}
    )
    task = task_of("task=flickr30k", f"task.data_root={root}")
    with pytest.warns(DataWarning, match=r"skipped 2 of 6 training captions longer than 8 tokens") as caught:
        train = task.dataset("train", max_query_len=8)
    assert "caption 0 of image 1001" in str(caught[0].message)
    # "Nothing happens here." has no box: dropped, not counted as too long
    assert sorted((s.image_id, s.sentence_id) for s in train.samples) == [
        ("1001", 3),
        ("1002", 0),
        ("1003", 0),
    ]
    with pytest.raises(CaptionTooLongError, match=r"evaluation scores every caption, so it cannot skip one"):
        task.dataset("test", max_query_len=8)


def test_collate_stacks_each_samples_caption(flickr_task):
    dataset = flickr_task.dataset("test", transforms=transforms_from_config(TINY, False))
    batch = GroundingCollate(flickr_task_input())([dataset[0], dataset[1]])
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, 256)
    assert torch.equal(batch["input_ids"][1], dataset.encoded[1].input_ids)
    assert not ({"input_ids", "attention_mask"} & set(batch["targets"][0]))
    assert batch["targets"][0]["positive_map"].shape == (3, 256)  # A, B, S of 1001/0
    # captions of one image share the view key (the backbone cache); the image was resized to 96
    assert batch["targets"][0]["image_id"] == batch["targets"][1]["image_id"]
    assert batch["targets"][0]["size"] == (96, 120) and batch["images"].shape[-2:] == (96, 128)


def flickr_task_input():
    from adapt.model.config import InputConfig

    return InputConfig(**{**TINY, "min_size_train": (96,)})


def perfect_predictions(dataset) -> list[dict]:
    """Each scored phrase gets the training boxes whose tokens overlap its own, as the module gives them."""
    out = []
    for index in range(len(dataset)):
        _, target = dataset[index]
        lists = []
        for tokens in target["phrase_tokens"]:
            rows = target["positive_map"][:, tokens].any(dim=1)
            lists.append(target["boxes"][rows])
        out.append(
            {
                "sample": index,
                "boxes": lists,
                "scores": [torch.ones(len(b)) for b in lists],
                "size": target["size"],
                "orig_size": target["orig_size"],
            }
        )
    return out


def test_training_targets_written_back_score_by_hand(flickr_task):
    dataset = flickr_task.dataset("test", transforms=transforms_from_config(TINY, False))
    samples, entries = prediction_entries(dataset, perfect_predictions(dataset)[::-1], "flickr")
    assert [(e["image_id"], e["sentence_id"]) for e in entries] == [
        ("1001", 0),
        ("1001", 1),
        ("1001", 3),
        ("1002", 0),
    ]
    assert entries[0]["boxes"][0] == [[10.0, 10.0, 30.0, 50.0], [60.0, 10.0, 80.0, 50.0]]  # A, B back
    result = evaluate_flickr(samples, entries)
    assert result["any_box"]["R@1"] == 100.0 and result["phrases"] == 8
    assert result["merged_box"]["R@1"] == 62.5 and result["merged_box"]["R@10"] == 62.5
    assert result["per_type"]["merged_box"]["people"]["R@1"] == 25.0  # only "A child" of 4


def test_refcoco_predictions_are_mdetr_refexp_entries(tmp_path):
    from PIL import Image

    images = tmp_path / "train2014"
    images.mkdir()
    for name in {i["file_name"] for i in MDETR_REFCOCO["images"]}:
        Image.new("RGB", (100, 80)).save(images / name)
    for split in ("train", "val", "testA"):
        write_json(tmp_path / f"finetune_refcoco_{split}.json", MDETR_REFCOCO)
    task = task_of("task=refcoco", f"task.data_root={tmp_path}")
    task.check_files()
    dataset = task.dataset("test", transforms=transforms_from_config(TINY, False))
    assert len(dataset) == 3 and len(dataset.image_index) == 2  # two expressions share an image
    samples, entries = prediction_entries(dataset, perfect_predictions(dataset), "refexp")
    assert entries[0] == {"image_id": 10, "boxes": [[10.0, 10.0, 30.0, 50.0]], "scores": [1.0]}
    assert precision_at_k(samples, entries)["P@1"] == 100.0
    # K-shot: K images with all their expressions
    assert sorted(s.entry_id for s in task.dataset("train", shots=1, seed=0).samples) in ([10, 11], [12])


def test_mdetr_flickr_file_opens_as_the_same_captions(tmp_path, flickr_root):
    for split in ("train", "val", "test"):
        write_json(tmp_path / f"final_flickr_separateGT_{split}.json", MDETR_FLICKR)
    task = task_of(
        "task=mdetr_flickr", f"task.data_root={tmp_path}", f"task.image_dir={flickr_root}/flickr30k-images"
    )
    task.check_files()
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        dataset = task.dataset("test", transforms=transforms_from_config(TINY, False))
    samples, entries = prediction_entries(dataset, perfect_predictions(dataset), "flickr")
    assert [(e["image_id"], e["sentence_id"]) for e in entries] == [("1001", 0), ("1001", 1), ("1002", 0)]
    result = evaluate_flickr(samples, entries)
    assert result["any_box"]["R@1"] == 100.0 and result["phrases"] == 6


def test_the_module_reads_each_captions_text_and_caches_the_backbone_per_image(flickr_task):
    from adapt.model import build_glip
    from adapt.modes import build_policy
    from adapt.train.feature_cache import view_keys
    from adapt.train.grounding import GroundingAdaptation
    from tests.model.test_forward_oracle import mini_config

    model = build_glip(mini_config())
    module = GroundingAdaptation(model, build_policy({"name": "prompt"}), feature_cache_mb=64)
    dataset = flickr_task.dataset("test", transforms=transforms_from_config(TINY, False))
    batch = GroundingCollate(flickr_task_input())([dataset[0], dataset[1]])  # two captions of 1001
    with torch.no_grad():
        text = module.text_features(2, batch)
        alone = model.encode_text(batch["input_ids"][1:], batch["attention_mask"][1:])
        assert torch.allclose(text.hidden[1], alone.hidden[0], atol=1e-5)
        # the tower's output depends on the caption: not cached; the backbone's is keyed by the image
        assert module.backbone_cacheable() and not module.tower_cacheable(batch)
        keys = view_keys(batch)
        assert keys is not None and keys[0] == keys[1]
        cached = module.cached_inputs(batch, text)
        assert set(cached) == {"features"} and len(module.feature_cache) == 1
    with pytest.raises(ValueError, match="carries its captions' input_ids"):
        module.text_features(2, {"images": batch["images"]})
