"""Build tests/fixtures/deploy/: a small prompt export and its deployed detector, shipped so that the
default tests check adapt.deploy on real files without tracing a graph (a minute or more of CPU).

    python scripts/make_deploy_fixture.py                 # rewrites tests/fixtures/deploy/
    python scripts/make_deploy_fixture.py --out /tmp/x    # elsewhere (tests/deploy's slow check)

The folder holds ``export/`` (a ``prompt`` run's export, made as a training run makes it:
``export_run`` on a model with the mode applied and its trainable tensors moved, seeded) and
``detector.onnx`` (``python -m adapt.deploy export export --out detector.onnx``).

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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "adapt"
OUT = ROOT / "tests" / "fixtures" / "deploy"
EXPORT_DIR = "export"
ONNX_FILE = "detector.onnx"
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


def build(out: Path) -> tuple[Path, Path]:
    """Write ``out/export`` and ``out/detector.onnx``; returns both paths."""
    from adapt.deploy.__main__ import main as deploy

    export = make_export(out / EXPORT_DIR, "prompt", arch=mini_arch(FIXTURE_ARCH), checkpoint=None)
    onnx_file = out / ONNX_FILE
    if deploy(["export", str(export), "--out", str(onnx_file)]) != 0:
        raise SystemExit(f"adapt.deploy export failed for {export}")
    return export, onnx_file


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=OUT, help=f"the folder to write (default: {OUT})")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    export, onnx_file = build(args.out)
    size = onnx_file.stat().st_size / 2**20
    print(f"{export}\n{onnx_file} ({size:.2f} MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
