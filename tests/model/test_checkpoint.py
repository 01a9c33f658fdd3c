"""Official checkpoints load onto adapt names and back, and bad files fail with clear messages."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from adapt.model import (
    GLIP,
    CheckpointError,
    GLIPConfig,
    build_glip,
    load_checkpoint,
    official_name,
    official_state_dict,
    read_config,
    save_official,
    save_safetensors,
)
from adapt.model.checkpoint import (
    LEGACY_POSITION_IDS_KEY,
    TUNABLE_LINEAR_KEY,
    canonical_safetensors,
    official_to_adapt,
)

FIXTURE = Path(__file__).parents[1] / "fixtures" / "glip_mini_oracle"
CONF = Path(__file__).parents[2] / "adapt" / "conf" / "model"
POSITION_IDS_NOTE = "language_backbone.body.model.embeddings.position_ids"


def config(name: str) -> GLIPConfig:
    return GLIPConfig.from_dict(yaml.safe_load((CONF / f"{name}.yaml").read_text())["arch"])


def key_listing(file: str) -> dict[str, tuple[str, str]]:
    """key -> (shape, dtype) from a fixture listing (comment lines start with '#')."""
    out = {}
    for line in (FIXTURE / file).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, shape, dtype = line.split("\t")[:3]
            out[key] = (shape, dtype)
    return out


@pytest.fixture(scope="module")
def official_sd() -> dict[str, torch.Tensor]:
    return torch.load(FIXTURE / "mini_glip.pth", weights_only=True)["model"]


@pytest.fixture()
def mini() -> GLIP:
    return build_glip(config("glip_mini"), seed=5)


def save(tmp_path: Path, sd: dict, name: str = "ckpt.pth", wrap: bool = True) -> Path:
    path = tmp_path / name
    torch.save({"model": sd} if wrap else sd, path)
    return path


# --------------------------------------------------------------------------------------------------
# full-size key sets (meta device: nothing is allocated)


@pytest.mark.parametrize(("name", "listing"), [("glip_t", "glipt_keys.txt"), ("glip_l", "glipl_keys.txt")])
def test_official_key_set_and_shapes(name: str, listing: str):
    with torch.device("meta"):
        model = GLIP(config(name))
    sd = official_state_dict(model)
    ours = {k: (str(list(v.shape)), str(v.dtype).removeprefix("torch.")) for k, v in sd.items()}
    ref = key_listing(listing)
    # The listings' note: transformers < 4.31 also saved embeddings.position_ids; adapt drops it.
    ref.pop(POSITION_IDS_NOTE, None)
    assert sorted(set(ref) - set(ours)) == []
    assert sorted(set(ours) - set(ref)) == []
    assert {k: v for k, v in ours.items() if ref[k] != v} == {}
    mapped, report = official_to_adapt(sd, {k: v.shape for k, v in model.state_dict().items()}, model.cfg)
    assert report.ok, str(report)
    assert set(mapped) == set(model.state_dict())


def test_official_name_matches_the_official_trainable_sets():
    """Adapt parameter names map onto the official names of requires_grad_modes.json."""
    modes = json.loads((FIXTURE / "requires_grad_modes.json").read_text())
    with torch.device("meta"):
        model = GLIP(config("glip_t"))
    names = [n for n, _ in model.named_parameters() if not n.startswith("head.cls_logits.")]
    assert {official_name(n) for n in names} == set(modes["glipt/full"]["trainable"])
    linear = [
        n
        for n in names
        if n.startswith(("head.bbox_pred.", "head.centerness.", "head.dot_product_projection_text."))
        or n in ("head.log_scale", "head.bias_lang", "head.bias0")
    ]
    assert {official_name(n) for n in linear} == set(modes["glipt/linear_prob"]["trainable"])
    assert [official_name("prompt_offset")] == modes["glipt/language_prompt_v2"]["trainable"]
    assert official_name("backbone.body.swin.encoder.layers.1.blocks.0.attention.k_proj.weight") == (
        "backbone.body.layers.1.blocks.0.attn.qkv.weight"
    )


# --------------------------------------------------------------------------------------------------
# round trips on the mini checkpoint


def test_official_round_trip_is_exact(mini: GLIP, official_sd: dict, tmp_path: Path):
    """official file -> adapt -> official file gives back every tensor bit for bit."""
    assert load_checkpoint(mini, FIXTURE / "mini_glip.pth").ok
    out = official_state_dict(mini)
    assert set(out) == set(official_sd)
    for key, value in official_sd.items():
        assert torch.equal(out[key], value), key
    path = tmp_path / "again.pth"
    save_official(mini, path)
    other = build_glip(config("glip_mini"), seed=6)
    assert load_checkpoint(other, path, strict=True).ok
    for (k, a), b in zip(mini.state_dict().items(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("layout", ["ddp_prefix", "bare"])
def test_accepted_layouts(mini: GLIP, official_sd: dict, tmp_path: Path, layout: str):
    sd = {f"module.{k}": v for k, v in official_sd.items()} if layout == "ddp_prefix" else official_sd
    report = load_checkpoint(mini, save(tmp_path, sd, wrap=layout != "bare"))
    assert report.ok, str(report)
    assert torch.equal(mini.head.bias0, official_sd["rpn.head.bias0"])


def test_legacy_position_ids_dropped(mini: GLIP, official_sd: dict, tmp_path: Path):
    sd = {**official_sd, LEGACY_POSITION_IDS_KEY: torch.arange(512)[None]}
    report = load_checkpoint(mini, save(tmp_path, sd), strict=True)
    assert any(LEGACY_POSITION_IDS_KEY in n for n in report.notes)


def test_safetensors_round_trip_with_config(mini: GLIP, tmp_path: Path):
    mini.enable_prompt_tuning()
    with torch.no_grad():
        mini.prompt_offset.normal_()
    path = tmp_path / "model.safetensors"
    save_safetensors(mini, path)
    assert read_config(path) == mini.cfg
    other = build_glip(read_config(path), seed=7)
    other.enable_prompt_tuning()
    report = load_checkpoint(other, path, strict=True)
    assert report.format == "adapt"
    for (k, a), b in zip(mini.state_dict().items(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_safetensors_bytes_do_not_depend_on_the_metadata_order(mini: GLIP, tmp_path: Path):
    """safetensors writes its metadata map in a per-process order; adapt's files sort it, so the
    same weights give the same bytes (the pinned hash of glip_mini_pretrained depends on it)."""
    from safetensors.torch import load, save

    path = tmp_path / "model.safetensors"
    save_safetensors(mini, path)
    written = path.read_bytes()
    size = int.from_bytes(written[:8], "little")
    header = json.loads(written[8 : 8 + size])
    assert list(header["__metadata__"]) == sorted(header["__metadata__"])
    tensors = load(written)
    for order in (sorted, lambda keys: sorted(keys, reverse=True)):
        meta = {k: header["__metadata__"][k] for k in order(header["__metadata__"])}
        assert canonical_safetensors(save(tensors, metadata=meta)) == written


# --------------------------------------------------------------------------------------------------
# the prompt offset (official tunable_linear)


def test_tunable_linear_loads_into_prompt_offset(mini: GLIP, official_sd: dict, tmp_path: Path):
    weight = torch.randn(1000, mini.cfg.language.hidden_size)
    path = save(tmp_path, {**official_sd, TUNABLE_LINEAR_KEY: weight})
    offset = mini.enable_prompt_tuning()
    report = load_checkpoint(mini, path, strict=True)
    assert torch.equal(offset, weight[: mini.cfg.language.max_query_len])
    assert any("never used" in n for n in report.notes)  # rows 256..999 were non-zero
    saved = official_state_dict(mini)[TUNABLE_LINEAR_KEY]
    assert saved.shape == weight.shape
    assert torch.equal(saved[: offset.shape[0]], offset) and not saved[offset.shape[0] :].any()


def test_tunable_linear_reported_without_prompt_tuning(mini: GLIP, official_sd: dict, tmp_path: Path):
    path = save(tmp_path, {**official_sd, TUNABLE_LINEAR_KEY: torch.zeros(1000, 64)})
    report = load_checkpoint(mini, path)
    assert report.unexpected == [TUNABLE_LINEAR_KEY]
    assert any("enable_prompt_tuning" in n for n in report.notes)


def test_pretrained_checkpoint_leaves_prompt_offset_at_zero(mini: GLIP):
    mini.enable_prompt_tuning()
    report = load_checkpoint(mini, FIXTURE / "mini_glip.pth")
    assert report.missing == ["prompt_offset"] and not report.unexpected
    assert not mini.prompt_offset.any()


# --------------------------------------------------------------------------------------------------
# bad inputs


def test_unexpected_keys_are_named(mini: GLIP, official_sd: dict, tmp_path: Path):
    path = save(tmp_path, {**official_sd, "rpn.head.something_new.weight": torch.zeros(3)})
    report = load_checkpoint(mini, path)
    assert report.unexpected == ["rpn.head.something_new.weight"]
    assert "rpn.head.something_new.weight" in str(report)
    with pytest.raises(CheckpointError, match=r"rpn\.head\.something_new\.weight"):
        load_checkpoint(mini, path, strict=True)


def test_missing_keys_are_named(mini: GLIP, official_sd: dict, tmp_path: Path):
    sd = {k: v for k, v in official_sd.items() if k != "rpn.head.bias_lang"}
    report = load_checkpoint(mini, save(tmp_path, sd))
    assert report.missing == ["head.bias_lang"]


def test_shape_mismatch_names_key_file_and_shapes(mini: GLIP, official_sd: dict, tmp_path: Path):
    path = save(tmp_path, {**official_sd, "rpn.head.bbox_pred.weight": torch.zeros(4, 32, 1, 1)}, "wrong.pth")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(mini, path)
    message = str(err.value)
    for part in (
        "rpn.head.bbox_pred.weight",
        "head.bbox_pred.weight",
        str(path),
        "[4, 32, 1, 1]",
        "[4, 64, 1, 1]",
    ):
        assert part in message


def test_fused_qkv_shape_mismatch(mini: GLIP, official_sd: dict, tmp_path: Path):
    key = "backbone.body.layers.0.blocks.0.attn.qkv.weight"
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        load_checkpoint(mini, save(tmp_path, {**official_sd, key: torch.zeros(96, 16)}))


def test_legacy_class_head_mismatch_keeps_init(mini: GLIP, official_sd: dict, tmp_path: Path):
    sd = {**official_sd, "rpn.head.cls_logits.weight": torch.zeros(12, 64, 1, 1)}
    sd["rpn.head.cls_logits.bias"] = torch.zeros(12)
    before = mini.head.cls_logits.weight.clone()
    report = load_checkpoint(mini, save(tmp_path, sd), strict=True)
    assert torch.equal(mini.head.cls_logits.weight, before)
    assert any("cls_logits" in n for n in report.notes)


def test_anchor_mismatch_is_an_error(mini: GLIP, official_sd: dict, tmp_path: Path):
    sd = {**official_sd, "rpn.anchor_generator.cell_anchors.0": torch.tensor([[-60.0, -60.0, 67.0, 67.0]])}
    with pytest.raises(CheckpointError, match=r"cell_anchors\.0"):
        load_checkpoint(mini, save(tmp_path, sd))


@pytest.mark.parametrize("name", ["corrupt.pth", "corrupt.safetensors"])
def test_corrupt_file_error_names_the_file(mini: GLIP, tmp_path: Path, name: str):
    path = tmp_path / name
    path.write_bytes((FIXTURE / "mini_glip.pth").read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=re.escape(name)):
        load_checkpoint(mini, path)


def test_missing_file_and_non_checkpoint(mini: GLIP, tmp_path: Path):
    with pytest.raises(CheckpointError, match=r"nothing\.pth"):
        load_checkpoint(mini, tmp_path / "nothing.pth")
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match=r"list\.pth"):
        load_checkpoint(mini, path)


def test_convert_cli(tmp_path: Path, official_sd: dict, capsys):
    from adapt.convert import main

    target = tmp_path / "mini.safetensors"
    assert main([str(FIXTURE / "mini_glip.pth"), str(target), "--model", "glip_mini"]) == 0
    model = build_glip(read_config(target), seed=9)
    assert load_checkpoint(model, target, strict=True).ok
    assert torch.equal(model.head.bias0, official_sd["rpn.head.bias0"])
    # A checkpoint that does not fit: status 1, the key named, no file written.
    bad = save(tmp_path, {**official_sd, "rpn.head.extra": torch.zeros(1)})
    assert main([str(bad), str(tmp_path / "bad.safetensors"), "--model", "glip_mini"]) == 1
    assert "rpn.head.extra" in capsys.readouterr().out
    assert not (tmp_path / "bad.safetensors").exists()


# --------------------------------------------------------------------------------------------------
# release files: extra entries, numpy scalars, unsafe globals


def _numpy1_pickle_module():
    """A pickle module that writes numpy scalars as numpy 1 did (``numpy.core.multiarray.scalar``)."""
    import pickle
    import types

    import numpy as np

    scalar = np._core.multiarray.scalar

    class Pickler(pickle._Pickler):
        def save_global(self, obj, name=None):
            if obj is scalar:
                self.write(pickle.GLOBAL + b"numpy.core.multiarray\nscalar\n")
                self.memoize(obj)
                return
            super().save_global(obj, name)

    return types.SimpleNamespace(Pickler=Pickler, __name__="numpy1_pickle")


def release_like(official_sd: dict, optimizer_of: dict) -> dict:
    """The layout of maskrcnn_benchmark's Checkpointer.save under DDP, with numpy counters."""
    import numpy as np

    return {
        "model": {f"module.{k}": v for k, v in official_sd.items()},
        "optimizer": {
            "state": {
                i: {"momentum_buffer": torch.randn(v.shape)} for i, v in enumerate(optimizer_of.values())
            },
            "param_groups": [
                {"lr": np.float64(1e-4), "momentum": 0.9, "params": list(range(len(optimizer_of)))}
            ],
        },
        "scheduler": {"milestones": [67000, 80000], "gamma": 0.1, "last_epoch": np.int64(90000)},
        "iteration": np.int64(90000),
    }


@pytest.mark.parametrize("numpy_pickle", ["numpy2", "numpy1"])
def test_release_like_checkpoint_loads_with_weights_only_and_mmap(
    mini: GLIP, official_sd: dict, tmp_path: Path, monkeypatch, numpy_pickle: str
):
    path = tmp_path / "model_final.pth"
    obj = release_like(official_sd, {k: official_sd[k] for k in list(official_sd)[:5]})
    kwargs = {"pickle_module": _numpy1_pickle_module()} if numpy_pickle == "numpy1" else {}
    torch.save(obj, path, **kwargs)
    globals_named = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    scalar = "numpy.core.multiarray.scalar" if numpy_pickle == "numpy1" else "numpy._core.multiarray.scalar"
    assert scalar in globals_named and "numpy.dtype" in globals_named
    calls: list[dict] = []
    real_load = torch.load

    def spy(*args, **kw):
        calls.append(kw)
        return real_load(*args, **kw)

    monkeypatch.setattr(torch, "load", spy)
    report = load_checkpoint(mini, path, strict=True)
    assert report.ok, str(report)
    assert calls == [{"map_location": "cpu", "weights_only": True, "mmap": True}]
    assert torch.equal(mini.head.bias0, official_sd["rpn.head.bias0"])
    assert torch.equal(mini.head.bbox_pred.weight, official_sd["rpn.head.bbox_pred.weight"])


def test_unsafe_global_names_it_and_the_conversion_that_works(official_sd: dict, tmp_path: Path):
    import numpy as np

    path = tmp_path / "with_arrays.pth"
    torch.save({"model": official_sd, "anchors_np": np.zeros((2, 2))}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(build_glip(config("glip_mini"), seed=1), path)
    message = str(info.value)
    assert "numpy.ndarray" in message and str(path) in message
    assert "python -m adapt.convert" in message and "weights_only" not in message
    # The suggested command converts the trusted file once; the result needs no pickle at all.
    from adapt.convert import main

    flags = re.findall(r"--allow-global (\S+)", message)
    target = tmp_path / "with_arrays.safetensors"
    assert (
        main([str(path), str(target), "--model", "glip_mini", *[f"--allow-global={g}" for g in flags]]) == 0
    )
    model = build_glip(read_config(target), seed=2)
    assert load_checkpoint(model, target, strict=True).ok
    assert torch.equal(model.head.bias0, official_sd["rpn.head.bias0"])


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (b"<!DOCTYPE html><html>40</html>\n", "an HTML page (31 bytes), not a checkpoint"),
        ("truncated", "a truncated torch archive"),
        (b"", "an empty file (0 bytes)"),
    ],
)
def test_bad_checkpoint_files_say_what_they_are_and_how_to_fetch_again(tmp_path: Path, content, said):
    # Named like glip_t's release file, so the fix is the download command.
    path = tmp_path / "glip_tiny_model_o365_goldg_cc_sbu.pth"
    if content == "truncated":
        content = (FIXTURE / "mini_glip.pth").read_bytes()[:20000]
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(build_glip(config("glip_mini"), seed=1), path)
    message = str(info.value)
    assert str(path) in message and said in message
    assert "fetch a good copy with: python -m adapt.download glip_t" in message
    assert "weights_only" not in message
