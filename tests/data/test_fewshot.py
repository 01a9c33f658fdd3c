"""The few-shot sampler: the official rule for every category, stable per seed, varied across seeds."""

from __future__ import annotations

import contextlib
import io
import json
import warnings

import pytest
from pycocotools.coco import COCO

from adapt.data.coco import load_coco_json
from adapt.data.errors import DataWarning
from adapt.fewshot import image_order, images_per_category, main, sample_fewshot
from tests.data.conftest import random_images, write_coco


def _data(tmp_path, n=60, n_cats=4, seed=0):
    path = write_coco(
        tmp_path,
        "train.json",
        random_images(n, n_cats, seed),
        ("a", "b", "c", "d")[:n_cats],
        make_images=False,
    )
    return load_coco_json(path)


def _satisfies_official_rule(source, split, shots, seed):
    """Replay the rule: each kept image was needed when reached, skipped ones were not, quotas met."""
    kept = {img["id"] for img in split["images"]}
    cats_of = {img["id"]: set() for img in source["images"]}
    for ann in source["annotations"]:
        cats_of[ann["image_id"]].add(ann["category_id"])
    need = {c["id"]: shots for c in source["categories"]}
    for image_id in image_order(list(cats_of), seed):
        needed = any(need[c] > 0 for c in cats_of[image_id])
        if all(v <= 0 for v in need.values()):
            assert image_id not in kept
            continue
        assert (image_id in kept) == needed, image_id
        if needed:
            for c in cats_of[image_id]:
                need[c] -= 1
    return all(v <= 0 for v in need.values())


@pytest.mark.parametrize("shots", [1, 3, 5, 10])
@pytest.mark.parametrize("seed", [3, 30, 300, None])
def test_every_category_has_at_least_k_images(tmp_path, shots, seed):
    data = _data(tmp_path, n=120)
    split = sample_fewshot(data, shots, seed)
    counts = images_per_category(split)
    assert all(counts[c["id"]] >= shots for c in data["categories"]), counts
    assert _satisfies_official_rule(data, split, shots, seed)
    # whole images: every annotation of a kept image comes along
    kept = {i["id"] for i in split["images"]}
    assert split["annotations"] == [a for a in data["annotations"] if a["image_id"] in kept]
    assert split["categories"] == data["categories"]


def test_deterministic_for_a_seed_and_different_across_seeds(tmp_path):
    data = _data(tmp_path, n=120)
    ids = {s: [i["id"] for i in sample_fewshot(data, 3, s)["images"]] for s in (3, 30, 300)}
    assert ids[3] == [i["id"] for i in sample_fewshot(data, 3, 3)["images"]]
    assert len({tuple(v) for v in ids.values()}) == 3


def test_seed_none_walks_ascending_ids_like_the_official_in_code_sampler(tmp_path):
    data = _data(tmp_path, n=40)
    split = sample_fewshot(data, 1, None)
    first_needed = []
    seen: set[int] = set()
    for img in sorted(data["images"], key=lambda i: i["id"]):
        cats = {a["category_id"] for a in data["annotations"] if a["image_id"] == img["id"]}
        if cats - seen:
            first_needed.append(img["id"])
            seen |= cats
    assert [i["id"] for i in split["images"]] == first_needed


def test_short_category_is_reported_not_hidden(tmp_path):
    images = [{"file": f"{i}.png", "boxes": [(1, 0, 0, 5, 5)]} for i in range(5)]
    images.append({"file": "d.png", "boxes": [(2, 0, 0, 5, 5)]})
    data = load_coco_json(write_coco(tmp_path, "t.json", images, make_images=False))
    with pytest.warns(DataWarning, match=r"dog \(1 of 3\)"):
        split = sample_fewshot(data, 3, 3)
    assert images_per_category(split) == {1: 3, 2: 1}


def test_invalid_shots(tmp_path):
    with pytest.raises(ValueError, match="positive integer"):
        sample_fewshot(_data(tmp_path), 0, 3)


def test_cli_writes_a_coco_file_that_loads_back(tmp_path, capsys):
    source = write_coco(
        tmp_path, "train.json", random_images(50, 3, 1), ("a", "b", "c"), make_images=False, background=True
    )
    out = tmp_path / "split" / "fewshot_train_shot5_seed30.json"
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        assert main(["--ann", str(source), "--shots", "5", "--seed", "30", "--out", str(out)]) == 0
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(out))
    assert all(len(coco.getImgIds(catIds=[c])) >= 5 for c in coco.getCatIds())
    assert 0 not in coco.getCatIds()  # background dropped, as annotations_without_background.json
    assert json.loads(out.read_text())["info"]["fewshot"] == {"shots": 5, "seed": 30, "source": str(source)}
    assert not list(out.parent.glob("*.tmp"))  # written atomically
    # same command, same bytes
    again = tmp_path / "again.json"
    main(["--ann", str(source), "--shots", "5", "--seed", "30", "--out", str(again)])
    assert again.read_text() == out.read_text().replace(str(out), str(again))


def test_cli_reports_bad_input(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert main(["--ann", str(bad), "--shots", "1", "--seed", "3", "--out", str(tmp_path / "o.json")]) == 2
    assert "bad.json: not valid JSON" in capsys.readouterr().err
