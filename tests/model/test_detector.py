"""The high-level Detector: images in, boxes in original pixels out; batching is consistent.

Uses the mini oracle checkpoint at a small test size (short side 64) so every forward is cheap.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from adapt.data.transforms import resize_boxes
from adapt.detector import Detector, model_config
from adapt.model import batch_images, save_safetensors
from adapt.prompt import PromptTooLongError

FIXTURE = Path(__file__).parents[1] / "fixtures" / "glip_mini_oracle"
CONF = Path(__file__).parents[2] / "adapt" / "conf" / "model"
BOX_ATOL = 1e-3  # px, as for the oracle detections
SCORE_ATOL = 1e-5
CLASSES = ["fish", "jellyfish", "penguin"]


def small_arch(**language: int) -> dict:
    arch = yaml.safe_load((CONF / "glip_mini.yaml").read_text())["arch"]
    arch["input"].update(min_size_test=64, max_size_test=128)
    arch["language"].update(language)
    return arch


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector.from_config(small_arch(), checkpoint=FIXTURE / "mini_glip.pth", batch_size=2)


def image(seed: int, size: tuple[int, int]) -> Image.Image:
    """A random RGB image of size (w, h) with some structure, so scores are not all equal."""
    g = torch.Generator().manual_seed(seed)
    w, h = size
    pixels = (
        torch.rand(h // 8 + 1, w // 8 + 1, 3, generator=g).repeat_interleave(8, 0).repeat_interleave(8, 1)
    )
    return Image.fromarray((pixels[:h, :w] * 255).to(torch.uint8).numpy())


def assert_same(a, b) -> None:
    """Same detections up to float rounding: matched by label and box, scores within tolerance."""
    assert len(a) == len(b)
    assert torch.equal(a.labels, b.labels) or sorted(a.labels.tolist()) == sorted(b.labels.tolist())
    for box, score, label in zip(b.boxes, b.scores, b.labels, strict=True):
        d = (a.boxes - box).abs().max(dim=1).values
        d[a.labels != label] = float("inf")
        k = d.argmin()
        assert d[k] <= BOX_ATOL and (a.scores[k] - score).abs() <= SCORE_ATOL


def test_load_report_is_clean(detector: Detector):
    assert detector.load_report is not None and detector.load_report.ok


def test_same_size_images_batched_equal_one_by_one(detector: Detector):
    """Without extra padding nothing couples the images of a batch (GroupNorm, pools and fusion
    are per image), so batch 2 gives each image's batch-1 result."""
    images = [image(0, (150, 100)), image(1, (150, 100))]
    together = detector.predict(images, classes=CLASSES, batch_size=2)
    alone = [detector.predict(im, classes=CLASSES, batch_size=1)[0] for im in images]
    for a, b in zip(together, alone, strict=True):
        assert len(a) > 0
        assert_same(a, b)


def test_padded_batch_equals_the_model_on_that_batch(detector: Detector):
    """Different sizes: each image's result is what the model gives it inside the padded batch
    (official semantics: the padding is seen by the network), mapped back to original pixels."""
    images = [image(2, (150, 100)), image(3, (90, 120)), image(4, (200, 60))]
    results = detector.predict(images, classes=CLASSES, batch_size=3)
    prompt = detector.encode(CLASSES)[0]
    tensors, originals = zip(*(detector.preprocess(im) for im in images), strict=True)
    batch, sizes = batch_images(list(tensors), detector.model.cfg.input)
    with torch.no_grad():
        text = detector.model.encode_text(
            prompt.input_ids[None].expand(3, -1), prompt.attention_mask[None].expand(3, -1)
        )
        raw = detector.model(batch, sizes, text=text, label_to_tokens=prompt.label_to_tokens)
    for ours, ref, size, original in zip(results, raw, sizes, originals, strict=True):
        order = ref["scores"].argsort(descending=True, stable=True)
        assert torch.equal(ours.scores, ref["scores"][order])
        assert torch.equal(ours.labels, ref["labels"][order])
        assert torch.equal(ours.boxes, resize_boxes(ref["boxes"][order], size, original))
        h, w = original
        assert (
            (ours.boxes >= 0).all() and (ours.boxes[:, 0::2] <= w).all() and (ours.boxes[:, 1::2] <= h).all()
        )
        assert ours.names == [CLASSES[i - 1] for i in ours.labels]


def test_uneven_last_batch_and_paths(detector: Detector, tmp_path: Path):
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        image(10 + i, (80 + 20 * i, 100)).save(paths[-1])
    results = detector.predict(paths, classes=CLASSES, batch_size=2)
    assert len(results) == 3 and all(len(r) > 0 for r in results)


def test_caption_with_marked_phrases(detector: Detector):
    im = image(5, (150, 100))
    marked = detector.predict(im, caption="a [fish] next to a [jellyfish]")[0]
    listed = detector.predict(im, caption="a fish next to a jellyfish", phrases=["fish", "jellyfish"])[0]
    assert set(marked.names) <= {"fish", "jellyfish"} and len(marked) > 0
    assert torch.equal(marked.scores, listed.scores) and marked.names == listed.names
    prompt = detector.encode(caption="a [fish] next to a [jellyfish]")[0]
    assert prompt.caption == "a fish next to a jellyfish"
    assert prompt.label_to_tokens == {1: [2], 2: [6, 7]}  # [CLS] a fish next to a jelly ##fish


def test_long_class_list_runs_in_chunks():
    """A vocabulary too long for one caption is split; labels stay global across chunks."""
    det = Detector.from_config(small_arch(max_query_len=24), checkpoint=FIXTURE / "mini_glip.pth")
    classes = [f"class number {i}" for i in range(12)]
    assert len(det.encode(classes)) > 1
    result = det.predict(image(6, (120, 100)), classes=classes)[0]
    assert len(result) > 0
    assert result.names == [classes[i - 1] for i in result.labels]
    assert (result.scores[:-1] >= result.scores[1:]).all()


def test_bad_prompts(detector: Detector):
    im = image(7, (64, 64))
    with pytest.raises(ValueError, match="either"):
        detector.predict(im)
    with pytest.raises(ValueError, match="not found"):
        detector.predict(im, caption="a fish", phrases=["shark"])
    with pytest.raises(ValueError, match="no phrase marked"):
        detector.predict(im, caption="a fish")
    with pytest.raises(PromptTooLongError):
        detector.predict(im, caption="[fish] " + "and more words " * 100)


def test_from_checkpoint_reads_the_config(detector: Detector, tmp_path: Path):
    path = tmp_path / "mini.safetensors"
    save_safetensors(detector.model, path)
    again = Detector.from_checkpoint(path)
    assert again.model.cfg == detector.model.cfg and again.load_report.ok
    im = image(8, (100, 100))
    assert_same(again.predict(im, classes=CLASSES)[0], detector.predict(im, classes=CLASSES)[0])


def test_model_configs_and_seeded_mini():
    """Every shipped model config parses; glip_mini has no released weights and builds from a
    fixed seed, so two untrained detectors agree."""
    for path in CONF.glob("*.yaml"):
        assert model_config(path.stem)["name"] == path.stem
    assert model_config("glip_mini")["checkpoint"]["file"] is None
    a = Detector.from_config("glip_mini").model.state_dict()
    b = Detector.from_config("glip_mini").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="unknown model config"):
        model_config("glip_xxl")


# -- exports: the detector a run exported is the run's own -----------------------------------------


def _export(tmp_path: Path, checkpoint: Path | None) -> Path:
    """A prompt export (zero offset) of the mini model at test size 64/128, trained on `checkpoint`
    (None: glip_mini's seeded random init)."""
    from adapt.export import checkpoint_identity, model_identity
    from adapt.model import GLIPConfig, build_glip, load_checkpoint
    from adapt.modes import build_policy, export_run
    from adapt.prompt import encode_prompt, load_tokenizer

    model = build_glip(GLIPConfig.from_dict(small_arch()))
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    policy = build_policy({"name": "prompt"})
    trainable = policy.apply(model)
    state = {n: p.detach() for n, p in model.named_parameters() if n in trainable}
    prompt = encode_prompt(CLASSES, load_tokenizer())
    identity = model_identity(model, "glip_mini", checkpoint_identity(checkpoint))
    return export_run(tmp_path / "export", model, policy, state, prompt, identity)


def test_from_export_uses_the_recorded_weights_sizes_and_settings(detector: Detector, tmp_path: Path):
    out = _export(tmp_path, FIXTURE / "mini_glip.pth")
    tuned = Detector.from_export(out, checkpoint=FIXTURE / "mini_glip.pth")
    assert tuned.model.cfg.input == detector.model.cfg.input  # 64/128, not glip_mini's 800/1333
    assert tuned.model.cfg.inference == detector.model.cfg.inference
    im = image(9, (150, 100))
    assert_same(tuned.predict(im)[0], detector.predict(im, classes=CLASSES)[0])


def test_from_export_refuses_other_base_weights_naming_the_expected_hash(detector: Detector, tmp_path: Path):
    from adapt.digest import file_sha256
    from adapt.export import ExportError

    out = _export(tmp_path, FIXTURE / "mini_glip.pth")
    want = file_sha256(FIXTURE / "mini_glip.pth")
    other = tmp_path / "other.safetensors"  # the same weights in another file: another hash
    save_safetensors(detector.model, other)
    with pytest.raises(
        ExportError, match=rf"other.safetensors: SHA-256 \w+ is not .*mini_glip.pth, sha256 {want}"
    ):
        Detector.from_export(out, checkpoint=other)
    # glip_mini has no official checkpoint to fall back on: the user is told which file to pass.
    with pytest.raises(
        ExportError, match=rf"trained on checkpoint mini_glip.pth \(sha256 {want}\).*--checkpoint"
    ):
        Detector.from_export(out)


def test_an_export_of_the_random_init_is_rebuilt_from_its_seed_and_refuses_a_checkpoint(tmp_path: Path):
    from adapt.export import ExportError

    out = _export(tmp_path, None)
    tuned = Detector.from_export(out)
    untrained = Detector.from_config(small_arch())  # the same seeded draw
    params = dict(untrained.model.named_parameters())
    for name, value in tuned.model.named_parameters():
        assert torch.equal(value, params[name]), name
    with pytest.raises(ExportError, match=r"random init \(seed 0\), not on .*mini_glip.pth"):
        Detector.from_export(out, checkpoint=FIXTURE / "mini_glip.pth")


def test_a_format_1_export_loads_at_the_model_configs_sizes_with_a_warning(tmp_path: Path):
    import json

    out = _export(tmp_path, None)
    config = json.loads((out / "adapter_config.json").read_text())
    config["version"] = 1
    del config["arch"]
    (out / "adapter_config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="records no test-time input sizes"):
        tuned = Detector.from_export(out)
    assert tuned.model.cfg.input.min_size_test == model_config("glip_mini")["arch"]["input"]["min_size_test"]
