"""Grounding readers on files in the real formats: the Flickr30k Entities release and MDETR's json."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from adapt.data.errors import DataError, DataWarning
from adapt.data.flickr import (
    IMAGES_HELP,
    flickr_samples,
    parse_sentence,
    read_annotation,
    read_sentences,
    read_split,
)
from adapt.data.grounding import CaptionTooLongError, encode_grounding, require_image_dir, require_images
from adapt.data.mdetr import COCO_IMAGES_HELP, mdetr_samples, read_mdetr
from adapt.prompt import load_tokenizer
from tests.grounding.conftest import C2, MDETR_FLICKR, A, B, D, F, S, write_json


def test_sentence_markup_to_caption_spans_ids_and_types():
    s = parse_sentence("[/EN#12/people/other A tall man] holds [/EN#0/notvisual it] .", "x.txt, line 1")
    assert s.caption == "A tall man holds it ."
    first, second = s.phrases
    assert (first.text, first.span, first.phrase_id, first.types) == (
        "A tall man",
        (0, 10),
        "12",
        ("people", "other"),
    )
    assert s.caption[slice(*second.span)] == "it" and second.phrase_id == "0" and second.first_word == 4


def test_flickr_samples_keep_every_caption_and_phrase(flickr_root):
    samples = flickr_samples(flickr_root, "test")
    assert [(s.image_id, s.sentence_id) for s in samples] == [
        ("1001", 0),
        ("1001", 1),
        ("1001", 2),
        ("1001", 3),
        ("1002", 0),
    ]
    first = samples[0]
    assert first.file_name == "1001.jpg" and first.size == (100, 80) and first.dataset == "flickr"
    # scene (chain 3, no box) and nobndbox (chain 4) phrases are kept as phrases, without boxes ...
    assert [(p.text, p.boxes) for p in first.phrases[2:]] == [("a street", ()), ("a sign", ())]
    # ... and the metric's view drops them; the multi-box chain keeps both boxes
    assert [p.text for p in first.eval_phrases] == ["Two men", "red shirts"]
    assert first.eval_phrases[0].boxes == (A, B)
    assert samples[2].eval_phrases == ()  # only a notvisual phrase


def test_flickr_training_boxes_follow_mdetr_conversion(flickr_root):
    samples = {(s.image_id, s.sentence_id): s for s in flickr_samples(flickr_root, "test")}
    # "a man pets a dog beside a man .": chain 1 is mentioned twice; its boxes are one target each,
    # named by both mentions; the dog box by its phrase
    repeated = samples[("1001", 1)]
    assert repeated.boxes == (A, B, D)
    assert repeated.box_spans == (((0, 5), (24, 29)), ((0, 5), (24, 29)), ((11, 16),))
    # a box shared by chains 2 and 6 carries the spans of the chain the caption mentions only
    assert samples[("1001", 3)].boxes == (F, S) and samples[("1001", 3)].box_spans == (((0, 7),), ((13, 20),))
    # two boxes of one chain with IoU 0.99 are one target, the group's last box; the phrase keeps both
    child = samples[("1002", 0)]
    assert child.boxes == (C2,) and len(child.phrases[0].boxes) == 2


def test_merged_training_boxes(flickr_root):
    merged = {(s.image_id, s.sentence_id): s for s in flickr_samples(flickr_root, "test", merge_boxes=True)}
    assert merged[("1001", 0)].boxes == ((10, 10, 80, 50), S)
    assert merged[("1001", 0)].phrases[0].boxes == (A, B)  # the metric merges by itself


def test_mdetr_file_reads_to_the_same_samples_as_the_release(flickr_root, mdetr_flickr_file):
    raw = {(s.image_id, s.sentence_id): s for s in flickr_samples(flickr_root, "test")}
    for sample in mdetr_samples(mdetr_flickr_file):
        ref = raw[(sample.image_id, sample.sentence_id)]
        assert sample.caption == ref.caption and sample.file_name == ref.file_name
        assert sample.boxes == ref.boxes and sample.box_spans == ref.box_spans
        assert [p.spans for p in sample.eval_phrases] == [p.spans for p in ref.eval_phrases]
        assert sample.size == ref.size  # "80" / "100": MDETR's Flickr files store sizes as strings
    assert [s.entry_id for s in mdetr_samples(mdetr_flickr_file)] == [0, 1, 2]


def test_mdetr_drops_boxes_without_area_like_its_loader(tmp_path):
    data = json.loads(json.dumps(MDETR_FLICKR))
    data["annotations"][0]["bbox"] = [10, 10, 0, 40]
    with pytest.warns(DataWarning, match="dropped 1 crowd boxes or boxes without width or height"):
        samples = mdetr_samples(write_json(tmp_path / "a.json", data))
    assert samples[0].boxes == (B, S)


def test_positive_maps_from_spans_through_the_tokenizer(flickr_root):
    tokenizer = load_tokenizer()
    sample = next(s for s in flickr_samples(flickr_root, "test") if s.sentence_id == 1)
    # [CLS] a man pets a dog beside a man . [SEP]
    encoded = encode_grounding(sample, tokenizer)
    assert encoded.phrase_tokens == [[1, 2], [4, 5], [7, 8]]
    assert encoded.positive_map.shape == (3, 256)
    assert encoded.positive_map[0].nonzero().flatten().tolist() == [1, 2, 7, 8]  # both mentions of the man
    assert encoded.positive_map[2].nonzero().flatten().tolist() == [4, 5]
    assert set(encoded.positive_map.unique().tolist()) == {0.0, 1.0}
    assert int(encoded.attention_mask.sum()) == 11 and encoded.input_ids.shape == (256,)


def test_caption_too_long_names_the_sample(flickr_root):
    sample = flickr_samples(flickr_root, "test")[0]
    with pytest.raises(
        CaptionTooLongError, match=r"caption 0 of image 1001 needs 15 tokens .* max_query_len is 8"
    ):
        encode_grounding(sample, load_tokenizer(), max_query_len=8)


def test_empty_caption_encodes_to_empty_maps(flickr_root):
    sample = flickr_samples(flickr_root, "test")[2]
    encoded = encode_grounding(sample, load_tokenizer())
    assert encoded.phrase_tokens == [] and encoded.positive_map.shape == (0, 256)


def test_missing_image_folder_says_how_to_get_the_images(tmp_path, flickr_root):
    with pytest.raises(DataError, match=r"not found: the Flickr30k images are not redistributed .* terms"):
        require_image_dir(tmp_path / "nowhere", IMAGES_HELP)
    with pytest.raises(DataError, match="COCO 2014 train images"):
        require_image_dir(tmp_path / "train2014", COCO_IMAGES_HELP)
    images = require_image_dir(flickr_root / "flickr30k-images", IMAGES_HELP)
    samples = flickr_samples(flickr_root, "test")
    require_images(samples, images, "test split")  # all there
    (images / "1002.jpg").unlink()
    with pytest.raises(DataError, match=r"test split: 1 of 2 images missing under .*: 1002.jpg"):
        require_images(samples, images, "test split")


def test_missing_release_says_where_to_get_it(tmp_path):
    with pytest.raises(DataError, match=r"annotations not found at .*BryanPlummer/flickr30k_entities"):
        flickr_samples(tmp_path, "test")


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("[EN#1/people A man] runs", r"s.txt, line 2: '\[EN#1/people' opens a phrase but is not of the form"),
        ("[/EN#1/people A man runs", r"s.txt, line 2: the phrase \[/EN#1/... is not closed"),
        ("[/EN#x/people A man] runs", r"s.txt, line 2: '\[/EN#x/people' opens a phrase"),
    ],
)
def test_malformed_sentence_names_file_and_line(tmp_path, line, message):
    path = write(tmp_path / "s.txt", "[/EN#2/people A woman] sits .\n" + line + "\n")
    with pytest.raises(DataError, match=message):
        read_sentences(path)


def test_sentence_ids_skip_empty_lines(tmp_path):
    path = write(tmp_path / "s.txt", "[/EN#2/people A woman] sits .\n\n[/EN#3/people A man] runs .\r\n")
    assert [s.caption for s in read_sentences(path)] == ["A woman sits .", "A man runs ."]


XML = "<annotation><size><width>10</width><height>10</height></size>{}</annotation>"


@pytest.mark.parametrize(
    ("objects", "message"),
    [
        (
            "<object><name>1</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>q</xmax><ymax>3</ymax></bndbox></object>",
            r"a.xml: <object> number 1 <bndbox> <xmax> is 'q', not a number",
        ),
        (
            "<object><name>1</name><bndbox><xmin>1</xmin><ymin>1</ymin><ymax>3</ymax></bndbox></object>",
            r"a.xml: <object> number 1 <bndbox> <xmax> is '', not a number",
        ),
        (
            "<object><name>1</name><bndbox><xmin>5</xmin><ymin>1</ymin><xmax>2</xmax><ymax>3</ymax></bndbox></object>",
            r"a.xml: <object> number 1 <bndbox> has xmax < xmin",
        ),
        (
            "<object><name>man</name><nobndbox>1</nobndbox></object>",
            r"a.xml: <object> number 1 has <name> \['man'\]",
        ),
        (
            "<object><name>1</name></object>",
            r"a.xml: <object> number 1 has neither <bndbox> nor <nobndbox>/<scene>",
        ),
        ("<object><name>1</name>", r"a.xml: not valid XML"),
    ],
)
def test_malformed_annotation_names_file_and_element(tmp_path, objects, message):
    with pytest.raises(DataError, match=message):
        read_annotation(write(tmp_path / "a.xml", XML.format(objects)))


def test_annotation_without_size(tmp_path):
    with pytest.raises(DataError, match=r"a.xml: no <size> element"):
        read_annotation(write(tmp_path / "a.xml", "<annotation></annotation>"))


def test_annotation_flags(tmp_path):
    image = read_annotation(
        write(
            tmp_path / "a.xml",
            XML.format(
                "<object><name>1</name><name>2</name><nobndbox>1</nobndbox><scene>0</scene></object>"
                "<object><name>3</name><scene>1</scene></object>"
            ),
        )
    )
    assert image.no_box == {"1", "2"} and image.scene == {"3"} and image.boxes == {}


def test_split_ids_must_be_file_stems(tmp_path):
    write(tmp_path / "test.txt", "1001\n../../etc/passwd\n")
    with pytest.raises(DataError, match=r"test.txt, line 2: '../../etc/passwd' is not an image id"):
        read_split(tmp_path, "test")


def test_split_lists_an_image_without_annotation(flickr_root):
    (flickr_root / "Annotations" / "1002.xml").unlink()
    with pytest.raises(DataError, match=r"1002.xml: file not found"):
        flickr_samples(flickr_root, "test")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["images"][0].pop("caption"), r"images\[0\] lacks id/file_name/caption"),
        (lambda d: d["images"][1].update(id=0), r"images\[1\]: duplicate image id 0"),
        (
            lambda d: d["images"][0].update(tokens_positive_eval=[[[0, 99]]]),
            r"images\[0\]\['tokens_positive_eval'\]\[0\] has span \[0, 99\], not \[start, end\) inside",
        ),
        (
            lambda d: d["images"][0].update(sentence_id="first"),
            r"images\[0\]: 'sentence_id' is 'first', not an integer",
        ),
        (
            lambda d: d["annotations"][2].pop("tokens_positive"),
            r"annotations\[2\] lacks image_id/bbox/tokens_positive",
        ),
        (lambda d: d["annotations"][2].update(image_id=7), r"annotations\[2\] refers to unknown image id 7"),
        (
            lambda d: d["annotations"][2].update(bbox=[1, 2, 3]),
            r"annotations\[2\] has an invalid bbox \[1, 2, 3\]",
        ),
        (
            lambda d: d["annotations"][2].update(tokens_positive=[[5, 2]]),
            r"annotations\[2\]\['tokens_positive'\] has span \[5, 2\]",
        ),
        (lambda d: d.pop("images"), r"expected a COCO-style object with an 'images' list"),
    ],
)
def test_malformed_mdetr_file_names_the_key(tmp_path, edit, message):
    data = json.loads(json.dumps(MDETR_FLICKR))
    edit(data)
    with pytest.raises(DataError, match=message):
        read_mdetr(write_json(tmp_path / "bad.json", data))


def test_refcoco_entries_are_one_phrase_one_box(refcoco_file):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        samples = mdetr_samples(refcoco_file)
    assert [(s.entry_id, s.image_id, s.dataset) for s in samples] == [
        (10, "10", "refcoco"),
        (11, "11", "refcoco"),
        (12, "12", "refcoco"),
    ]
    dog = samples[1]
    assert [p.text for p in dog.eval_phrases] == ["dog"] and dog.eval_phrases[0].boxes == (D,)
    assert torch.equal(encode_grounding(dog, load_tokenizer()).positive_map.nonzero(), torch.tensor([[0, 2]]))
