"""Where a family's weights come from: random init, a save_pretrained folder, the HF cache offline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adapt.families import FamilyConfigError, FamilyLoadError, FamilySpec, build_family, family_from_folder
from tests.families.conftest import ALL, CLASSES, image

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each mini model written by save_pretrained (weights, config.json, processor and tokenizer)."""
    out = {}
    for name in ALL:
        folder = tmp_path_factory.mktemp(name)
        build_family(name).save_pretrained(folder)
        out[name] = folder
    return out


def hub_cache(root: Path, repo: str, folder: Path) -> Path:
    """huggingface_hub's cache layout for `repo` at one commit: refs/main -> snapshots/<commit>/."""
    entry = root / f"models--{repo.replace('/', '--')}"
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(COMMIT)
    shutil.copytree(folder, entry / "snapshots" / COMMIT)
    return root


@pytest.mark.parametrize("name", ALL)
def test_a_save_pretrained_folder_is_the_model(saved: dict[str, Path], name: str):
    """The folder alone (config.json picks the family) gives the same weights and detections."""
    original = build_family(name)
    loaded = family_from_folder(saved[name], inference=original.settings)
    assert type(loaded) is type(original)
    assert loaded.identity["weights_sha256"] == original.identity["weights_sha256"]
    assert loaded.identity["path"] == str(saved[name]) and loaded.identity["random_init_seed"] is None
    img = image(0, (48, 80))
    a, b = original.detect([img], CLASSES), loaded.detect([img], CLASSES)
    assert torch.equal(a[0]["scores"], b[0]["scores"]) and torch.equal(a[0]["boxes"], b[0]["boxes"])


def test_the_model_configs_weights_path_and_overrides(saved: dict[str, Path]):
    folder = str(saved["grounding_dino_mini"])
    spec = {"name": "mine", "family": "grounding_dino", "weights": {"path": folder}}
    fam = build_family({**spec, "config": {"auxiliary_loss": False, "dropout": 0.0}})
    assert fam.hf.config.auxiliary_loss is False and fam.hf.config.dropout == 0.0
    with pytest.raises(FamilyConfigError, match=r"config\.no_such_key is not a setting"):
        build_family({**spec, "config": {"no_such_key": 1}})
    with pytest.raises(FamilyLoadError, match="holds a 'owlv2' model; family 'grounding_dino' runs"):
        build_family({**spec, "weights": {"path": str(saved["owlv2_mini"])}})
    with pytest.raises(FamilyLoadError, match="not a save_pretrained folder"):
        build_family({**spec, "weights": {"path": str(Path(folder) / "missing")}})


def test_a_folder_without_its_weights_is_refused(saved: dict[str, Path], tmp_path: Path):
    folder = tmp_path / "incomplete"
    shutil.copytree(saved["owlv2_mini"], folder)
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(FamilyLoadError, match="cannot load"):
        family_from_folder(folder)


def test_from_the_hf_cache_offline(saved: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A hub repo id resolves from a populated HF cache with the network forbidden: huggingface_hub's
    own cache layout and offline switch (HF_HUB_CACHE and HF_HUB_OFFLINE as read at import)."""
    from huggingface_hub import constants

    cache = hub_cache(tmp_path / "hub", "adapt-test/gdino-mini", saved["grounding_dino_mini"])
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    spec = {"name": "cached", "family": "grounding_dino", "weights": {"repo": "adapt-test/gdino-mini"}}
    fam = build_family(spec)
    assert fam.identity["weights_sha256"] == build_family("grounding_dino_mini").identity["weights_sha256"]
    assert fam.identity["repo"] == "adapt-test/gdino-mini" and fam.identity["commit"] == COMMIT
    with pytest.raises(FamilyLoadError, match="adapt-test/not-cached"):
        build_family({**spec, "weights": {"repo": "adapt-test/not-cached"}})


@pytest.mark.slow
def test_from_the_hf_cache_with_the_environment_variables(saved: dict[str, Path], tmp_path: Path):
    """The same in a fresh process configured only by HF_HUB_CACHE and HF_HUB_OFFLINE=1."""
    cache = hub_cache(tmp_path / "hub", "adapt-test/owl-mini", saved["owlv2_mini"])
    code = (
        "from adapt.families import build_family\n"
        "f = build_family({'name': 'c', 'family': 'owlv2', 'weights': {'repo': 'adapt-test/owl-mini'}})\n"
        "print(f.identity['weights_sha256'])\n"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.getcwd()}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split()[-1] == build_family("owlv2_mini").identity["weights_sha256"]


def test_random_init_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = build_family("owlv2_mini")
    after = torch.rand(3)
    b = build_family({**_yaml("owlv2_mini"), "seed": 1})
    assert torch.equal(expected, after)
    assert (
        a.identity["random_init_seed"] == 0 and a.identity["weights_sha256"] != b.identity["weights_sha256"]
    )
    assert build_family("owlv2_mini").identity["weights_sha256"] == a.identity["weights_sha256"]


def _yaml(name: str) -> dict:
    import yaml

    from adapt.families.spec import files

    return yaml.safe_load(files("adapt").joinpath("conf", "model", f"{name}.yaml").read_text())


def test_every_family_config_parses():
    names = ["grounding_dino_t", "grounding_dino_b", "mm_grounding_dino_t", "llmdet_t", "owlv2_b16"]
    repos = {}
    for name in [*names, *ALL]:
        spec = FamilySpec.from_config(_yaml(name))
        assert spec.name == name
        repos[name] = spec.repo
    assert repos["grounding_dino_t"] == "IDEA-Research/grounding-dino-tiny"
    assert repos["grounding_dino_b"] == "IDEA-Research/grounding-dino-base"
    assert repos["mm_grounding_dino_t"] == "openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg_v3det"
    assert repos["llmdet_t"] == "iSEE-Laboratory/llmdet_tiny"
    assert repos["owlv2_b16"] == "google/owlv2-base-patch16-ensemble"
    assert FamilySpec.from_config(_yaml("llmdet_t")).family == "mm_grounding_dino"
    assert all(repos[n] is None for n in ALL)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"family": None}, "`family` must name"),
        ({"weights": {"url": "x"}}, r"unknown keys weights.\['url'\]"),
        ({"colour": 1}, r"unknown keys \['colour'\]"),
        ({"seed": "one"}, "seed='one' must be an integer"),
        ({"inference": {"decoding": "nms"}}, "inference.decoding='nms'"),
        ({"inference": {"threshold": 2}}, "inference.threshold=2"),
        ({"config": None}, "give weights.repo, weights.path or"),
        ({"tokenizer": "gpt2"}, "adapt ships"),
        ({"config": {**_yaml("owlv2_mini")["config"], "text_config": {"vocab_size": 100}}}, "609 tokens"),
    ],
)
def test_bad_family_configs_say_which_key(change: dict, message: str):
    with pytest.raises((FamilyConfigError, ValueError), match=message):
        build_family({**_yaml("owlv2_mini"), **change})


def test_unknown_family_and_model_type():
    from adapt.families import family_class, family_for_model_type

    with pytest.raises(ValueError, match="unknown detector family 'yolo'; known"):
        family_class("yolo")
    with pytest.raises(ValueError, match="no adapt family runs model_type 'detr'"):
        family_for_model_type("detr")
    assert json.loads(json.dumps(build_family("owlv2_mini").identity))["family"] == "owlv2"
