"""Build tests/fixtures/deploy/: a small prompt export and its deployed detector, shipped so that the
default tests check adapt.deploy on real files without tracing a graph (a minute or more of CPU).

    python scripts/make_deploy_fixture.py                 # rewrites tests/fixtures/deploy/
    python scripts/make_deploy_fixture.py --out /tmp/x    # elsewhere (tests/deploy's slow check)

The folder holds:

* ``export/``: a ``prompt`` run's export, made as a training run makes it (``export_run`` on a model
  with the mode applied and its trainable tensors moved, seeded);
* ``detector.onnx``: ``python -m adapt.deploy export export --out detector.onnx``;
* ``reference.npz``: adapt's eager outputs for the graph's outputs (``export.reference_outputs``:
  adapt's own deformable convolution, the full text) on a batch of three synthetic images (uint8,
  stored beside them) at sizes the resize rule leaves alone, so the batch is the runtime's
  arithmetic only, the same on every machine;
* ``fixture.json``: what the files were made by and for (the export format version, the deployed
  file's format and graph versions, the opset, the library versions) and every file's SHA-256.

tests/deploy check the files against ``fixture.json`` and this adapt's versions, and say to rerun this
script when they differ; the slow test rebuilds the folder and compares.

The model is glip_mini's architecture (Swin with shifted windows, FPN, the fusion tower with its
deformable convolutions, the prediction layers: the graph every GLIP deploys) with changes that
keep the fixture small (its ``detector.onnx`` is about 2.5 MiB; glip_mini's would be about 11) and
the comparison meaningful:

* narrower layers: ``head.fusion_embed_dim`` 256 instead of 2048 (the fusion's projections are
  most of glip_mini's image side), ``head.channels`` 32 instead of 64, ``swin.embed_dim`` 8
  instead of 16. Widths change no operation of the graph: the same ops, in the same order;
* build_glip's seeded random init (recorded in the export as ``random_init_seed``, so neither
  adapt.predict nor adapt.deploy needs a checkpoint file), with the export's score threshold 0:
  an untrained model scores every location near the prior (0.01), so every location is a
  candidate and the whole post-processing runs (pre-NMS cut, NMS, the per-image cap).

The test images are the demo's test split at the demo budget's test sizes (320 / 533).

This module is also where tests/deploy's exports of every mode come from (``make_export``), so the
shipped fixture and the tests' fresh exports are made by one recipe.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import shutil
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from adapt.atomic import atomic_path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "adapt"
OUT = ROOT / "tests" / "fixtures" / "deploy"
EXPORT_DIR = "export"
ONNX_FILE = "detector.onnx"
REFERENCE_FILE = "reference.npz"
MANIFEST_FILE = "fixture.json"
REGENERATE = "python scripts/make_deploy_fixture.py"
ORACLE_CHECKPOINT = ROOT / "tests" / "fixtures" / "glip_mini_oracle" / "mini_glip.pth"
# The demo budget's test sizes (conf/budget/demo_glip_mini.yaml).
DEMO_SIZES = {"min_size_test": 320, "max_size_test": 533}
# "tree" is the demo's class; "jellyfish" is two word pieces, so the class pooling averages tokens.
CLASSES = ("tree", "jellyfish", "bush")
# The shipped LoRA targets at rank 2: a peft LoraConfig node, as conf/mode/lora.yaml builds it.
LORA = {
    "_target_": "peft.LoraConfig",
    "r": 2,
    "lora_alpha": 4,
    "target_modules": yaml.safe_load((PACKAGE / "conf" / "mode" / "lora.yaml").read_text())["policy"][
        "config"
    ]["target_modules"],
}
# What the shipped fixture changes in glip_mini's architecture (see the module docstring).
FIXTURE_ARCH: dict[str, dict[str, Any]] = {
    "swin": {"embed_dim": 8},
    "head": {"fusion_embed_dim": 256, "channels": 32},
    "inference": {"score_threshold": 0.0},
}
FIXTURE_SEED = 0
# The reference images (height, width): short side 320 and long side within 533, so the resize rule
# keeps them as they are; padded together to 480 x 448 (a size the graph was not traced at), batch 3.
REFERENCE_SIZES = ((320, 320), (320, 448), (480, 320))


def mini_arch(overrides: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """glip_mini's architecture at the demo's test sizes, with ``overrides`` per section."""
    arch = yaml.safe_load((PACKAGE / "conf" / "model" / "glip_mini.yaml").read_text())["arch"]
    arch["input"].update(DEMO_SIZES)
    for section, values in (overrides or {}).items():
        arch[section].update(copy.deepcopy(dict(values)))
    return arch


def make_export(
    out: Path,
    mode: str,
    seed: int = 7,
    scale: float = 0.02,
    arch: Mapping[str, Any] | None = None,
    checkpoint: Path | None = ORACLE_CHECKPOINT,
    classes: Sequence[str] = CLASSES,
) -> Path:
    """A run's export of ``mode``: the base weights (``checkpoint``, else build_glip's init from
    ``FIXTURE_SEED``), the mode applied, its trainable tensors moved by ``scale`` x N(0, 1) (seeded)."""
    from adapt.export import checkpoint_identity, model_identity
    from adapt.model import GLIPConfig, build_glip, load_checkpoint
    from adapt.modes import build_policy, export_run
    from adapt.prompt import encode_prompt, load_tokenizer

    model = build_glip(GLIPConfig.from_dict(dict(arch or mini_arch())), seed=FIXTURE_SEED)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # peft draws lora_A from the global generator
        mode_cfg: dict[str, Any] = {"name": mode}
        if mode == "lora":
            mode_cfg["policy"] = {"_target_": "adapt.modes.LoRA", "config": LORA}
        policy = build_policy(mode_cfg)
        trainable = policy.apply(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in trainable:
                p.add_(scale * torch.randn(p.shape, generator=g))
    model.eval()
    state = {n: p.detach() for n, p in model.named_parameters() if n in trainable}
    prompt = encode_prompt(list(classes), load_tokenizer())
    weights = checkpoint_identity(checkpoint, random_init_seed=FIXTURE_SEED)
    identity = model_identity(model, "glip_mini", weights)
    return export_run(out, model, policy, state, prompt, identity, task="demo")


def reference_images(seed: int = FIXTURE_SEED) -> list[np.ndarray]:
    """Synthetic RGB uint8 images at :data:`REFERENCE_SIZES`: 16 px blocks of seeded values (smooth
    enough to look like an image to the convolutions, and a few KiB compressed)."""
    g = torch.Generator().manual_seed(seed)
    images = []
    for h, w in REFERENCE_SIZES:
        coarse = torch.randint(0, 256, (h // 16, w // 16, 3), generator=g, dtype=torch.uint8)
        images.append(coarse.repeat_interleave(16, 0).repeat_interleave(16, 1).numpy())
    return images


def reference_batch(detector: Any, images: Sequence[np.ndarray]) -> np.ndarray:
    """The graph's input for ``images`` as the deployed runtime makes it (normalise, pad, batch)."""
    from PIL import Image

    arrays = [detector.preprocess(Image.fromarray(im)) for im in images]
    assert all(a.shape[1:] == im.shape[:2] for a, im in zip(arrays, images, strict=True)), "resized"
    return detector.batch(arrays, [f"reference {k}" for k in range(len(images))])


def write_reference(export: Path, onnx_file: Path, out: Path) -> Path:
    """``out`` (.npz): the reference images and adapt's eager outputs on their batch, by output name."""
    from adapt.deploy.export import reference_outputs
    from adapt.deploy.runtime import DeployedDetector
    from adapt.deploy.source import from_export

    detector = DeployedDetector(onnx_file)
    images = reference_images()
    batch = torch.from_numpy(reference_batch(detector, images))
    outputs = reference_outputs(from_export(export), batch)
    arrays = {f"image{k}": im for k, im in enumerate(images)}
    arrays.update(zip(detector.meta["graph"]["outputs"], outputs, strict=True))
    return save_npz(out, arrays)


def save_npz(out: Path, arrays: Mapping[str, np.ndarray]) -> Path:
    """np.savez_compressed's layout (``np.load`` reads it) with fixed entry times, so the same arrays
    give the same bytes (numpy stamps each entry with the current time)."""
    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w") as zf:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buffer.getvalue())
    return out


def manifest(folder: Path) -> dict[str, Any]:
    """``fixture.json``: the versions the files were made for, the libraries, every file's SHA-256."""
    import onnx
    import onnxruntime
    import onnxscript

    import adapt
    from adapt.deploy.export import GRAPH_VERSION, OPSET, TOLERANCE
    from adapt.deploy.format import VERSION
    from adapt.digest import file_sha256
    from adapt.export import FORMAT_VERSION

    files = sorted(
        p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE
    )
    return {
        "made_by": "scripts/make_deploy_fixture.py",
        "regenerate": REGENERATE,
        "export_format_version": FORMAT_VERSION,
        "deploy_format_version": VERSION,
        "graph_version": GRAPH_VERSION,
        "opset": OPSET,
        "made_with": {
            "adapt": adapt.__version__,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxscript": onnxscript.__version__,
            "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__,
        },
        "reference": {"sizes": [list(s) for s in REFERENCE_SIZES], "tolerance": dict(TOLERANCE)},
        "files": {name: file_sha256(folder / name) for name in files},
    }


def build(out: Path) -> tuple[Path, Path]:
    """Write ``out`` (replacing it whole once every file is made): ``export/``, ``detector.onnx``,
    ``reference.npz`` and ``fixture.json``; returns the export folder and the .onnx file."""
    from adapt.atomic import write_json
    from adapt.deploy.__main__ import main as deploy

    ours = {EXPORT_DIR, ONNX_FILE, REFERENCE_FILE, MANIFEST_FILE}
    if out.exists() and not {p.name for p in out.iterdir()} <= ours:
        raise SystemExit(f"{out}: holds files a deploy fixture does not ({sorted(ours)}); give a new folder")
    work = out.with_name(f".{out.name}.building")
    shutil.rmtree(work, ignore_errors=True)
    export = make_export(work / EXPORT_DIR, "prompt", arch=mini_arch(FIXTURE_ARCH), checkpoint=None)
    onnx_file = work / ONNX_FILE
    if deploy(["export", str(export), "--out", str(onnx_file)]) != 0:
        raise SystemExit(f"adapt.deploy export failed for {export}")
    write_reference(export, onnx_file, work / REFERENCE_FILE)
    write_json(manifest(work), work / MANIFEST_FILE)
    shutil.rmtree(out, ignore_errors=True)
    work.rename(out)
    return out / EXPORT_DIR, out / ONNX_FILE


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=OUT, help=f"the folder to write (default: {OUT})")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    _, onnx_file = build(args.out)
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file()) / 2**20
    digest = json.loads((args.out / MANIFEST_FILE).read_text())["files"][ONNX_FILE]
    print(f"{args.out}: {total:.2f} MiB in all; {onnx_file.name} sha256 {digest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
