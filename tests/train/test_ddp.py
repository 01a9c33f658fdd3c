"""Data-parallel training is exact: 2 CPU processes (gloo) against one process, on glip_mini.

* One DDP step with one image per rank has the single-process batch-2 gradient: the ATSS loss
  normalises by the positives (and centerness sum) averaged over ranks, as the official
  ``reduce_sum(x) / num_gpus``, and DDP averages the gradients.
* Validation gathers every rank's detections, without the duplicates of sampler padding, into the
  single-process list: the AP is the single-process AP exactly.
* ``python -m adapt.run trainer.strategy=ddp trainer.devices=2`` completes, and only rank 0 writes
  results.json and the export.

The two-process workers are started with ``torch.multiprocessing.spawn`` once per module; the
end-to-end run goes through Lightning's own launcher (``slow``: about two minutes on 2 cores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from train_helpers import TrainingStep, compose_job

from adapt.data import build_task
from adapt.modes import build_policy
from adapt.runs.job import build_model, task_prompt
from adapt.train.datamodule import DistributedEpochSampler, EpochSampler, TaskDataModule
from adapt.train.module import GLIPAdaptation, gather_predictions

WORLD = 2
# Same images, same padding; only the order of the float32 sums differs (per-rank partial sums,
# then the all-reduce), so the gradients agree to float32 rounding of values of order 1e-2..1.
GRAD_RTOL, GRAD_ATOL = 1e-5, 1e-7
STEP = 1  # the demo's first batch holds one image twice (its two copies); the second does not


def _setup(mode: str = "prompt") -> tuple[GLIPAdaptation, TaskDataModule]:
    """The demo task, glip_mini (weights from its fixed seed) and tiny inputs, as adapt.run builds them."""
    torch.set_num_threads(1)
    cfg = compose_job(f"mode={mode}")
    task = build_task(cfg.task)
    model, _ = build_model(cfg)
    prompt = task_prompt(task, model)
    dm = TaskDataModule(
        task,
        prompt,
        model.cfg.input,
        shots=cfg.shots,
        copies=int(cfg.recipe.copies),
        seed=int(cfg.seed),
        batch_size=WORLD,  # global: one image per rank
        eval_batch_size=WORLD,
    )
    module = GLIPAdaptation(model, build_policy(cfg.mode), prompt, seed=int(cfg.seed))
    return module, dm


class _Rank:
    """Stands in for the trainer the datamodule asks for (world size, rank)."""

    def __init__(self, rank: int, world: int) -> None:
        self.global_rank, self.world_size = rank, world


def _nth(loader: Any, k: int) -> dict[str, Any]:
    return next(batch for i, batch in enumerate(loader) if i == k)


def _grads(module: GLIPAdaptation) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in module.model.named_parameters() if p.grad is not None}


def _predictions(module: GLIPAdaptation, loader: Any) -> list[dict[str, Any]]:
    module.eval()
    module.on_validation_epoch_start()
    with torch.no_grad():
        for i, batch in enumerate(loader):
            module.validation_step(batch, i)
    return gather_predictions(module._predictions)


def _worker(rank: int, world: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        module, dm = _setup()
        dm.trainer = _Rank(rank, world)  # type: ignore[assignment]
        loader = dm.train_dataloader()
        assert isinstance(loader.sampler, DistributedEpochSampler) and loader.batch_size == 1
        batch = _nth(loader, STEP)
        module.train()
        ddp = torch.nn.parallel.DistributedDataParallel(TrainingStep(module))
        ddp(batch).backward()
        predictions = _predictions(module, dm.val_dataloader())
        if rank == 0:
            torch.save({"grads": _grads(module), "predictions": _strip(predictions)}, out)
    finally:
        dist.destroy_process_group()


def _strip(predictions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keep = ("boxes", "scores", "labels", "target")
    return [{**{k: p[k] for k in keep}, "id": int(p["target"]["image_id"])} for p in predictions]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("ddp")
    out = folder / "rank0.pt"
    # fork: the workers inherit the imported modules (spawn would re-import torch, lightning, ...).
    mp.start_processes(
        _worker, args=(WORLD, str(folder / "store"), str(out)), nprocs=WORLD, join=True, start_method="fork"
    )
    return torch.load(out, weights_only=True)


def test_one_ddp_step_has_the_single_process_batch_gradient(two_processes: dict[str, Any]):
    module, dm = _setup()
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, EpochSampler) and loader.batch_size == WORLD
    batch = _nth(loader, STEP)
    # Two different images with different numbers of boxes (33 and 17 on the demo): normalising
    # each rank by its own positives would give another gradient.
    assert len({len(t["boxes"]) for t in batch["targets"]}) == WORLD
    module.train()
    TrainingStep(module)(batch).backward()
    want, got = _grads(module), two_processes["grads"]
    assert want and set(got) == set(want)
    for name, grad in want.items():
        torch.testing.assert_close(got[name], grad, rtol=GRAD_RTOL, atol=GRAD_ATOL, msg=name)


def test_ddp_validation_gathers_each_image_once_and_gives_the_single_process_ap(two_processes):
    module, dm = _setup()
    single = _strip(_predictions(module, dm.val_dataloader()))
    gathered = two_processes["predictions"]
    n_images = len(dm.split("val"))
    assert n_images % WORLD, "an odd split: torch's padded DistributedSampler would repeat an image"
    assert [p["id"] for p in gathered] == [p["id"] for p in single] and len(single) == n_images
    for got, want in zip(gathered, single, strict=True):
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=0)
    # The AP itself, through the job's evaluator (pycocotools), from both lists.
    from adapt.metrics.coco import detections_to_coco, evaluate

    task, coco = dm.task, dm.split("val").coco

    def ap(preds: list[dict[str, Any]]) -> float:
        dets = [{k: p[k] for k in ("boxes", "scores", "labels")} for p in preds]
        results = detections_to_coco(dets, [p["target"] for p in preds], task.category_ids)
        return evaluate(coco, results, max_dets=task.max_dets)["ap"]

    assert ap(gathered) == ap(single)


def test_distributed_train_sampler_deals_the_single_process_batches():
    """Rank r's k-th batch is its part of the single-process k-th batch, for every epoch."""
    size, batch, seed = 13, 4, 3
    single = EpochSampler(size, seed)
    for world in (2, 4):
        ranks = [DistributedEpochSampler(size, seed, batch, world, r) for r in range(world)]
        for epoch in (0, 5):
            single.set_epoch(epoch)
            for s in ranks:
                s.set_epoch(epoch)
            order = list(single)
            per_rank = [list(s) for s in ranks]
            assert {len(p) for p in per_rank} == {size // batch * batch // world}
            for k in range(size // batch):
                local = batch // world
                together = sorted(i for p in per_rank for i in p[k * local : (k + 1) * local])
                assert together == sorted(order[k * batch : (k + 1) * batch])


def test_global_batch_must_split_evenly_over_devices():
    _, dm = _setup()
    dm.batch_size = 3
    dm.trainer = _Rank(0, 2)  # type: ignore[assignment]
    with pytest.raises(ValueError, match=r"data\.batch_size=3"):
        dm.train_dataloader()


_AUDIT = """
    # Runs adapt.run and logs every atomic file write with the writing rank.
    import os, sys
    _replace = os.replace
    def _audited(src, dst, *a, **k):
        with open({log!r}, "a") as f:
            f.write(os.environ.get("LOCAL_RANK", "0") + " " + str(dst) + "\\n")
        return _replace(src, dst, *a, **k)
    os.replace = _audited
    from adapt.run import main
    main()
"""


@pytest.mark.slow
def test_two_process_run_completes_and_rank_zero_alone_writes(tmp_path: Path):
    log = tmp_path / "writes.log"
    script = tmp_path / "audited_run.py"
    script.write_text(textwrap.dedent(_AUDIT.format(log=str(log))))
    run_dir = tmp_path / "run"
    from train_helpers import TINY_INPUT

    cmd = [
        sys.executable,
        str(script),
        "trainer=debug",
        "trainer.strategy=ddp",
        f"trainer.devices={WORLD}",
        "trainer.accelerator=cpu",
        "trainer.max_steps=1",
        "data.num_workers=0",
        "logger=csv",
        f"hydra.run.dir={run_dir}",
        *TINY_INPUT,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "complete" and results["machine"]["processes"] == WORLD
    assert results["val_history"] and (run_dir / "export" / "adapter_config.json").is_file()
    writes = [line.split(" ", 1) for line in log.read_text().splitlines()]
    ours = [(rank, Path(dst)) for rank, dst in writes if Path(dst).is_relative_to(run_dir)]
    assert ours and {rank for rank, _ in ours} == {"0"}, ours
    export_writes = [dst for _, dst in ours if dst.parent.name == "export"]
    assert sorted(d.name for d in export_writes) == sorted(p.name for p in (run_dir / "export").iterdir())
