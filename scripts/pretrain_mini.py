"""Pretrain ``glip_mini`` on the generated grounding world (``adapt.data.world``), on a CPU.

Why: adapt ships no released mini weights, and a random-init model shows nothing about what
prompt tuning is for. This script teaches the mini architecture words the way GLIP learns them:
captions whose marked phrases ground boxes, the ATSS grounding loss of ``adapt.model.loss`` with
token-level positive maps built from the phrase spans by ``adapt.prompt.encode_caption``. The
result is ``adapt/resources/glip_mini_pretrained.safetensors`` (``model=glip_mini_pretrained``).

    python scripts/pretrain_mini.py                         # the shipped schedule (see --help)
    python scripts/pretrain_mini.py --steps 12 --log-every 6 --out /tmp/short.safetensors   # the slow test's

Reproducible: the scenes come from the world's seed, the weights' init from ``build_glip``'s
seed, stochastic regularisers (dropout, DropPath, DropBlock) are off, so nothing else draws random
numbers, and torch runs on a fixed number of threads (kernels may split reductions differently on
another thread count, or another CPU, changing the last bits). The same command on the same
machine and software gives the same file, byte for byte.

Regularisers are off on purpose: every scene is fresh (there is nothing to overfit), and on a
short schedule they only slow learning. They stay in the shipped config, so fine-tuning uses them
as GLIP does.

The log (``--log``, JSON) records the loss curve, wall and CPU time, the load average while it
ran, the machine, the output's size and SHA-256.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torchvision.transforms.functional as TF
from torch import nn

from adapt.atomic import atomic_path, write_json
from adapt.data.coco import xywh_to_xyxy
from adapt.data.world import WORLD_VERSION, Scene, pretraining_scene
from adapt.model import GLIPConfig, build_glip
from adapt.model.backbone import DropBlock2d
from adapt.model.checkpoint import save_safetensors
from adapt.model.config import model_config
from adapt.model.preprocess import batch_images
from adapt.prompt import encode_caption, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "adapt" / "resources" / "glip_mini_pretrained.safetensors"
MODEL = "glip_mini_pretrained"  # whose arch is trained and recorded in the file


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=2500, help="optimiser steps (2500: the shipped file)")
    p.add_argument("--batch-size", type=int, default=4, help="scenes per step")
    p.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate")
    p.add_argument("--warmup", type=int, default=100, help="linear warm-up steps")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0, help="world stream and weight init")
    p.add_argument("--threads", type=int, default=1, help="torch threads (part of what the hash depends on)")
    p.add_argument(
        "--fp16", action=argparse.BooleanOptionalAction, default=True, help="store weights as fp16"
    )
    p.add_argument("--out", type=Path, default=SHIPPED)
    p.add_argument("--fp32-copy", type=Path, default=None, help="also save the fp32 weights here")
    p.add_argument("--log", type=Path, default=None, help="JSON log (default: OUT with .json)")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument(
        "--save-every", type=int, default=0, help="also save OUT.step<N>.safetensors every N steps"
    )
    return p.parse_args(argv)


def targets_of(scene: Scene, tokenizer, max_query_len: int):
    """Token ids, mask and the loss target of a scene: every box positive on all its phrases' tokens."""
    spans = [(p.start, p.end) for p in scene.phrases]
    encoded = encode_caption(
        scene.caption,
        spans,
        [scene.phrase_text(p) for p in scene.phrases],
        tokenizer,
        max_query_len=max_query_len,
    )
    positive = torch.zeros(len(scene.objects), max_query_len)
    for label, phrase in enumerate(scene.phrases, start=1):
        tokens = encoded.label_to_tokens.get(label, [])
        for i in phrase.objects:
            positive[i, tokens] = 1.0
    if len(scene.objects) and not bool(positive.sum(1).gt(0).all()):
        raise AssertionError(f"a box of caption {scene.caption!r} has no token")
    boxes = xywh_to_xyxy(torch.tensor([t.box for t in scene.objects], dtype=torch.float32).reshape(-1, 4))
    return encoded.input_ids, encoded.attention_mask, {"boxes": boxes, "positive_map": positive}


def no_stochastic_layers(model: nn.Module) -> None:
    """Training mode without dropout, DropPath or DropBlock (see the module docstring)."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.Dropout | DropBlock2d) or "DropPath" in type(module).__name__:
            module.eval()


def learning_rate(step: int, args: argparse.Namespace) -> float:
    """Linear warm-up, then a cosine down to 5% of the peak."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    t = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


def machine() -> dict[str, object]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def save(model: nn.Module, path: Path, fp16: bool) -> None:
    """adapt's safetensors format (weights + GLIPConfig), written atomically; fp16 halves the file."""
    state = {
        k: v.detach().half() if fp16 and v.is_floating_point() else v for k, v in model.state_dict().items()
    }
    with atomic_path(path) as tmp:
        save_safetensors(model, tmp, state_dict=state)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    log_path = args.log or args.out.with_suffix(".json")
    arch = model_config(MODEL)["arch"]
    cfg = GLIPConfig.from_dict(arch)
    model = build_glip(cfg, seed=args.seed)
    no_stochastic_layers(model)
    tokenizer = load_tokenizer(cfg.language.tokenizer)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "bias" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim > 1 and "bias" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
    )
    record: dict[str, object] = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "world_version": WORLD_VERSION,
        "model": MODEL,
        "machine": machine(),
        "threads": torch.get_num_threads(),
        "curve": [],
    }
    curve: list[dict[str, float]] = record["curve"]  # type: ignore[assignment]
    window: dict[str, float] = {}
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args)
        scenes = [pretraining_scene(args.seed, step * args.batch_size + b) for b in range(args.batch_size)]
        ids, masks, targets = zip(
            *(targets_of(s, tokenizer, cfg.language.max_query_len) for s in scenes), strict=True
        )
        images, sizes = batch_images([TF.to_tensor(s.image) for s in scenes], cfg.input)
        losses = model(
            images,
            sizes,
            input_ids=torch.stack(ids),
            attention_mask=torch.stack(masks),
            targets=list(targets),
        )
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        for key, value in losses.items():
            window[key] = window.get(key, 0.0) + value.item()
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            n = (step % args.log_every) + 1
            point = {"step": step + 1, **{k: round(v / n, 5) for k, v in window.items()}}
            point |= {
                "lr": learning_rate(step, args),
                "wall_s": round(time.perf_counter() - start_wall, 1),
                "cpu_s": round(time.process_time() - start_cpu, 1),
                "load1": os.getloadavg()[0],
            }
            curve.append(point)
            window = {}
            print(" ".join(f"{k}={v}" for k, v in point.items()), flush=True)
            write_json(record, log_path)
        if args.save_every and (step + 1) % args.save_every == 0 and step + 1 < args.steps:
            save(model, args.out.with_suffix(f".step{step + 1}.safetensors"), args.fp16)

    save(model, args.out, args.fp16)
    if args.fp32_copy is not None:
        save(model, args.fp32_copy, fp16=False)
    record |= {
        "wall_s": round(time.perf_counter() - start_wall, 1),
        "cpu_s": round(time.process_time() - start_cpu, 1),
        "output": {"file": str(args.out), "bytes": args.out.stat().st_size, "sha256": file_sha256(args.out)},
    }
    write_json(record, log_path)
    print(f"{args.out}: {record['output']['bytes']} bytes, sha256 {record['output']['sha256']}")  # type: ignore[index]
    return 0


if __name__ == "__main__":
    sys.exit(main())
