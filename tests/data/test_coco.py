"""Validated COCO loading and the dataset: official filtering, targets, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from adapt.data.coco import CocoDetection, load_coco_json, xywh_to_xyxy
from adapt.data.errors import DataError, DataWarning
from adapt.data.io import read_image

pytestmark = pytest.mark.filterwarnings("ignore::adapt.data.errors.DataWarning")


def _dataset(path: Path, train: bool, category_ids=(1, 2), **kwargs) -> CocoDetection:
    return CocoDetection(load_coco_json(path), path, path.parent, list(category_ids), train=train, **kwargs)


def test_background_category_zero_is_dropped(tmp_path, make_coco):
    path = make_coco(
        tmp_path, "a.json", [{"file": "a.png", "boxes": [(1, 1, 1, 5, 5), (0, 2, 2, 5, 5)]}], background=True
    )
    data = load_coco_json(path)
    assert [c["id"] for c in data["categories"]] == [1, 2]
    assert [a["category_id"] for a in data["annotations"]] == [1]
    assert len(load_coco_json(path, drop_background=False)["categories"]) == 3


def test_train_split_filters_like_the_official_loader(tmp_path, make_coco):
    images = [
        {"file": "ok.png", "boxes": [(1, 0, 0, 10, 10), (2, 5, 5, 1, 8)]},  # one degenerate box kept
        {"file": "empty.png", "boxes": []},
        {"file": "degenerate.png", "boxes": [(1, 0, 0, 1, 10), (2, 0, 0, 10, 0.5)]},
        {"file": "crowd.png", "boxes": [(1, 0, 0, 10, 10, 1)]},
        {"file": "mixed.png", "boxes": [(1, 0, 0, 10, 10, 1), (2, 1, 1, 8, 8)]},
    ]
    path = make_coco(tmp_path, "t.json", images)
    train = _dataset(path, train=True, transforms=None)
    assert [train.coco.imgs[i]["file_name"] for i in train.ids] == ["ok.png", "mixed.png"]
    assert train.stats["dropped_no_boxes"] == 2 and train.stats["dropped_degenerate"] == 1
    _, target = train[1]
    assert target["labels"].tolist() == [2]  # crowd box removed
    # w = 1 gives x2 == x1 with the +1 convention: removed as empty
    _, target = train[0]
    assert target["boxes"].tolist() == [[0.0, 0.0, 9.0, 9.0]]
    test = _dataset(path, train=False, transforms=None)
    assert len(test) == 5  # evaluation keeps images without annotations
    assert test[1][1]["boxes"].shape == (0, 4)


def test_target_layout_and_plus_one_boxes(tmp_path, make_coco):
    path = make_coco(tmp_path, "t.json", [{"file": "a.png", "size": (64, 48), "boxes": [(2, 4, 6, 10, 20)]}])
    image, target = _dataset(path, train=False, transforms=None)[0]
    assert image.shape == (3, 48, 64)
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    assert target["boxes"].tolist() == [[4.0, 6.0, 13.0, 25.0]]  # x2 = x + w - 1
    assert target["labels"].tolist() == [2]
    assert target["image_id"] == 1 and target["orig_size"] == (48, 64) and target["size"] == (48, 64)


def test_boxes_outside_the_image_are_clipped_or_removed(tmp_path, make_coco):
    boxes = [(1, -10, -10, 30, 30), (1, 100, 100, 10, 10), (1, 50, 40, 40, 40)]
    path = make_coco(tmp_path, "t.json", [{"file": "a.png", "size": (64, 48), "boxes": boxes}])
    _, target = _dataset(path, train=True, transforms=None)[0]
    assert target["boxes"].tolist() == [[0.0, 0.0, 19.0, 19.0], [50.0, 40.0, 63.0, 47.0]]


def test_missing_category_in_split_warns(tmp_path, make_coco):
    path = make_coco(tmp_path, "t.json", [{"file": "a.png", "boxes": [(1, 0, 0, 10, 10)]}])
    with pytest.warns(DataWarning, match="no example of dog"):
        _dataset(path, train=False)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("", "file is empty"),
        ("{not json", "not valid JSON"),
        ("[]", "expected a COCO object"),
        ('{"images": [], "annotations": []}', "missing or invalid 'categories'"),
        ('{"images": [{"id": 1}], "categories": [{"id": 1, "name": "a"}]}', "without id/file_name"),
        (
            '{"images": [{"id": 1, "file_name": "a"}], "categories": [{"id": 1, "name": "a"}],'
            ' "annotations": [{"id": 7, "image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1]}]}',
            "annotation 7 refers to unknown image id 2",
        ),
        (
            '{"images": [{"id": 1, "file_name": "a"}], "categories": [{"id": 1, "name": "a"}],'
            ' "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1]}]}',
            "annotation 7 has an invalid bbox",
        ),
        (
            '{"images": [{"id": 1, "file_name": "a"}], "categories": [{"id": 1, "name": "a"}],'
            ' "annotations": [{"id": 7, "image_id": 1, "category_id": 5, "bbox": [0, 0, 1, 1]}]}',
            "unknown category id 5",
        ),
        (
            '{"images": [{"id": 1, "file_name": "a"}], "categories": [{"id": 1, "name": "a"}],'
            ' "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2]},'
            ' {"id": 7, "image_id": 1, "category_id": 1, "bbox": [5, 5, 2, 2]}]}',
            "duplicate annotation id 7$",
        ),
        (
            '{"images": [{"id": 1, "file_name": "a"}], "categories": [{"id": 1, "name": "a"}],'
            ' "annotations": [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2]}]}',
            "annotation number 1 has no id",
        ),
    ],
)
def test_malformed_annotation_files_name_file_and_problem(tmp_path, content, problem):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DataError, match=problem) as info:
        load_coco_json(path)
    assert str(path) in str(info.value)


def test_missing_annotation_file(tmp_path):
    with pytest.raises(DataError, match="annotation file not found"):
        load_coco_json(tmp_path / "nope.json")


def test_missing_images_are_listed_before_training(tmp_path, make_coco):
    images = [{"file": f"m{i}.png", "boxes": [(1, 0, 0, 5, 5)]} for i in range(12)]
    path = make_coco(tmp_path, "t.json", images, make_images=False)
    with pytest.raises(DataError, match=r"12 of 12 images missing .*m0.png.* and 2 more"):
        _dataset(path, train=True)


def test_truncated_and_unreadable_images_raise_with_the_file(tmp_path, make_coco):
    path = make_coco(tmp_path, "t.json", [{"file": "a.jpg", "size": (64, 48)}, {"file": "b.png"}])
    jpg = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "a.jpg").write_bytes(jpg[: len(jpg) // 2])  # so short that the header is cut
    (tmp_path / "b.png").write_bytes(b"definitely not a png")
    # found when the split is opened (headers are read), naming the image, the file and the split
    with pytest.raises(DataError) as info:
        _dataset(path, train=False, split="test")
    assert str(info.value) == (
        f"{tmp_path / 'a.jpg'}: image is truncated or corrupt (Truncated File Read); "
        f"it is listed in {path} (test split) (1 more images are unreadable too)"
    )
    ds = _dataset(path, train=False, check_files=False)  # and still when read, if not checked first
    with pytest.raises(DataError, match=r"a\.jpg: image is truncated or corrupt"):
        ds[0]
    with pytest.raises(DataError, match=r"b\.png: not a readable image"):
        ds[1]


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "CMYK", "P", "I;16"])
def test_image_modes_convert_as_pil_does(tmp_path, mode):
    path = tmp_path / ("x.tif" if mode in ("CMYK", "I;16") else "x.png")
    Image.new(mode, (8, 6)).save(path)
    image = read_image(path)
    expected = Image.open(path).convert("RGB")
    assert image.mode == "RGB" and image.size == (8, 6)
    assert image.tobytes() == expected.tobytes()


def test_exif_rotation_is_ignored_like_the_official_loader(tmp_path, make_coco):
    path = make_coco(tmp_path, "t.json", [{"file": "r.jpg", "size": (40, 20), "boxes": [(1, 1, 1, 10, 10)]}])
    image = Image.new("RGB", (40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": exif_transpose would give 20 x 40
    image.save(tmp_path / "r.jpg", exif=exif)
    tensor, target = _dataset(path, train=False, category_ids=(1, 2), transforms=None)[0]
    assert tensor.shape == (3, 20, 40) and target["orig_size"] == (20, 40)


def test_size_mismatch_with_json_warns_and_uses_stored_pixels(tmp_path, make_coco):
    path = make_coco(tmp_path, "t.json", [{"file": "a.png", "size": (64, 48), "boxes": [(1, 0, 0, 60, 40)]}])
    Image.new("RGB", (32, 24)).save(tmp_path / "a.png")
    with pytest.warns(
        DataWarning,
        match=r"\(val split\): 1 images are stored at another size .*"
        r"a\.png: 32x24 stored, 64x48 recorded",
    ):
        ds = _dataset(path, train=False, split="val")
    _, target = ds[0]
    assert target["boxes"].tolist() == [[0.0, 0.0, 31.0, 23.0]]
    assert ds.coco.anns[1]["bbox"] == [0, 0, 32, 24]  # the evaluation ground truth is clipped alike
    unchecked = _dataset(path, train=False, check_files=False)
    with pytest.warns(DataWarning, match="differs"):
        _, target = unchecked[0]
    assert target["boxes"].tolist() == [[0.0, 0.0, 31.0, 23.0]]


def test_bad_boxes_are_dropped_or_clipped_with_a_warning_that_counts_them(tmp_path, make_coco):
    boxes = [
        (1, 4, 4, 10, 10),  # 1: fine
        (1, 5, 5, 0, 10),  # 2: zero width
        (2, 5, 5, 10, -3),  # 3: negative height
        (1, -10, -10, 30, 30),  # 4: crosses the top-left corner
        (2, 50, 40, 40, 40),  # 5: crosses the bottom-right corner
        (1, 100, 100, 10, 10),  # 6: wholly outside
        (2, -20, 5, 10, 10),  # 7: wholly outside, to the left
        (1, 0, 0, 64, 48),  # 8: the whole image, not clipped
    ]
    path = make_coco(tmp_path, "t.json", [{"file": "a.png", "size": (64, 48), "boxes": boxes}])
    with pytest.warns(DataWarning) as caught:
        data = load_coco_json(path, split="test")
    assert [str(w.message) for w in caught] == [
        f"{path} (test split): of 8 boxes, dropped 2 with non-positive width or height (ids 2, 3); "
        "dropped 2 lying wholly outside their image (ids 6, 7); clipped 2 to their image (ids 4, 5); "
        "training and evaluation both use the corrected boxes"
    ]
    assert {a["id"]: a["bbox"] for a in data["annotations"]} == {
        1: [4, 4, 10, 10],
        4: [0, 0, 20, 20],
        5: [50, 40, 14, 8],
        8: [0, 0, 64, 48],
    }
    assert {a["id"]: a["area"] for a in data["annotations"]} == {1: 100, 4: 400, 5: 112, 8: 3072}
    # training targets are the evaluation ground truth (+1 convention), box for box
    for train in (True, False):
        ds = CocoDetection(data, path, tmp_path, [1, 2], train=train)
        _, target = ds[0]
        gt = torch.tensor([a["bbox"] for a in ds.coco.imgToAnns[ds.ids[0]]], dtype=torch.float32)
        assert target["boxes"].tolist() == xywh_to_xyxy(gt).tolist()


def test_missing_area_and_iscrowd_are_filled_for_cocoeval(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 48}],
                "categories": [{"id": 1, "name": "cat"}],
                "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 20]}],
            }
        )
    )
    (ann,) = load_coco_json(path)["annotations"]
    assert ann["area"] == 200 and ann["iscrowd"] == 0


def test_unknown_category_for_the_task_is_an_error(tmp_path, make_coco):
    path = make_coco(tmp_path, "t.json", [{"file": "a.png", "boxes": [(2, 0, 0, 5, 5)]}])
    with pytest.raises(DataError, match=r"category ids \[2\] not in the task"):
        _dataset(path, train=False, category_ids=[1])


def test_no_usable_training_image_is_an_error(tmp_path, make_coco):
    path = make_coco(tmp_path, "t.json", [{"file": "a.png", "boxes": [(1, 0, 0, 1, 1)]}])
    with pytest.raises(DataError, match="no training image has a usable box"):
        _dataset(path, train=True)


def test_json_roundtrip_of_validation_does_not_mutate_file(tmp_path, make_coco):
    path = make_coco(tmp_path, "t.json", [{"file": "a.png", "boxes": [(0, 0, 0, 5, 5)]}], background=True)
    before = path.read_text()
    load_coco_json(path)
    assert json.loads(path.read_text()) == json.loads(before)
