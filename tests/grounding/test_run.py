"""A grounding task trains and evaluates end to end (`python -m adapt.run task=...`), in each format.

The job is composed as `python -m adapt.run` composes it (tests/train/train_helpers.compose_job:
trainer=debug, tiny input sizes) on the fixtures of conftest.py, with glip_mini. Its recalls mean
nothing (random weights); what is checked is the plumbing: per-sample captions through training,
ranked boxes per phrase through the run's evaluation, the protocol selecting on the task's key,
results.json, the printed tables, and a predictions file that `adapt.evaluate grounding` scores to
the very numbers the run recorded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adapt.evaluate import main as evaluate_main
from adapt.runs.job import run_job
from tests.grounding.conftest import FLICKR, MDETR_FLICKR, MDETR_REFCOCO, write_flickr, write_json
from tests.train.train_helpers import TINY_INPUT, compose_job

# An untrained head scores every token near its prior (0.01): a zero threshold keeps boxes to rank.
SHORT = ("shots=1", "trainer.max_steps=1", "model.arch.inference.score_threshold=0.0")


@pytest.fixture(autouse=True)
def _two_threads() -> None:
    torch.set_num_threads(2)


def check_run(run_dir: Path, metric: str = "any_box.R@1") -> dict:
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "complete", results.get("error")
    assert results["task_type"] == "grounding" and results["val_metric"] == metric
    assert [set(h) for h in results["val_history"]] == [{"step", "epoch", metric, "lr"}]
    assert results["best_val"] == results["val_history"][0][metric]
    assert results["export"] is None and (run_dir / "checkpoints" / "best.safetensors").is_file()
    assert not (run_dir / "checkpoints" / "last.ckpt").exists()
    return results


def test_flickr30k_release_trains_and_evaluates_end_to_end(tmp_path, capsys):
    root = write_flickr(tmp_path / "flickr30k_entities")
    cfg = compose_job("task=flickr30k", f"task.data_root={root}", "mode=prompt", *SHORT)
    returned = run_job(cfg, run_dir=tmp_path / "run")
    results = check_run(tmp_path / "run")
    test = results["test"]
    for protocol in ("any_box", "merged_box"):
        assert set(test[protocol]) == {"R@1", "R@5", "R@10", "upper_bound"}
        assert set(test["per_type"][protocol]) == {"people", "clothing", "animals", "scene", "other"}
    assert (test["phrases"], test["sentences"]) == (8, 4)
    assert returned == test["any_box"]["R@1"]
    printed = capsys.readouterr().out
    assert "any_box" in printed and "merged_box" in printed and "per phrase type" in printed
    # the run's predictions, scored by the metric's own command, give the recorded numbers
    predictions = tmp_path / "run" / "test_grounding.json"
    command = ["grounding", "--flickr-root", str(root), "--split", "test", "--results", str(predictions)]
    assert evaluate_main([*command, "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["any_box"] == test["any_box"] and again["merged_box"] == test["merged_box"]


def test_mdetr_files_train_and_evaluate_end_to_end(tmp_path):
    flickr = write_flickr(tmp_path / "flickr")
    mdetr = tmp_path / "mdetr_annotations"
    for split in ("train", "val", "test"):
        write_json(mdetr / f"final_flickr_separateGT_{split}.json", MDETR_FLICKR)
    cfg = compose_job(
        "task=mdetr_flickr",
        f"task.data_root={mdetr}",
        f"task.image_dir={flickr / 'flickr30k-images'}",
        "mode=linear",
        *SHORT,
    )
    run_job(cfg, run_dir=tmp_path / "run")
    results = check_run(tmp_path / "run")
    assert (results["test"]["phrases"], results["test"]["sentences"]) == (6, 3)
    entries = json.loads((tmp_path / "run" / "test_grounding.json").read_text())
    assert [len(e["boxes"]) for e in entries] == [2, 3, 1]  # one ranked list per scored phrase


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["full", "lora"])
def test_other_modes_train_on_captions(tmp_path, mode):
    root = write_flickr(tmp_path / "flickr30k_entities")
    extra = ["mode.policy.config.r=2"] if mode == "lora" else []
    run_job(
        compose_job("task=flickr30k", f"task.data_root={root}", f"mode={mode}", *SHORT, *extra),
        tmp_path / "r",
    )
    check_run(tmp_path / "r")


@pytest.mark.slow
def test_refcoco_trains_and_evaluates_precision(tmp_path):
    from PIL import Image

    images = tmp_path / "train2014"
    images.mkdir()
    for name in {i["file_name"] for i in MDETR_REFCOCO["images"]}:
        Image.new("RGB", (100, 80), (120, 60, 30)).save(images / name)
    for split in ("train", "val", "testA"):
        write_json(tmp_path / f"finetune_refcoco_{split}.json", MDETR_REFCOCO)
    run_job(
        compose_job("task=refcoco", f"task.data_root={tmp_path}", "mode=prompt", *SHORT), tmp_path / "run"
    )
    results = check_run(tmp_path / "run", metric="P@1")
    assert {"P@1", "P@5", "P@10", "per_dataset", "expressions"} <= set(results["test"])


@pytest.mark.slow
def test_the_command_line(tmp_path):
    """`python -m adapt.run` itself: the recall table printed; no image folder: one sentence, exit 2."""
    root = write_flickr(tmp_path / "flickr30k_entities")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "WANDB_MODE": "offline"}
    base = [sys.executable, "-m", "adapt.run", "task=flickr30k", f"task.data_root={root}", "trainer=debug"]
    base += ["logger=none", "data.num_workers=0", *TINY_INPUT, *SHORT]
    proc = subprocess.run(
        [*base, "mode=prompt"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    assert "any_box" in proc.stdout and "R@1" in proc.stdout
    missing = subprocess.run(
        [*base, "task.image_dir=/nonexistent/flickr30k-images"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert missing.returncode == 2
    assert "Flickr30K webpage" in missing.stderr and "Traceback" not in missing.stderr


@pytest.mark.slow
def test_two_processes_gather_every_caption_once(tmp_path):
    """DDP (2 gloo processes): each rank predicts its share, the gathered set is every test caption.

    The val image is 1001 (three captions to score): every rank needs one (Lightning refuses an
    empty evaluation loader on a rank, and the evaluation sampler pads nothing, as for detection).
    """
    splits = {"train": ["1003"], "val": ["1001"], "test": ["1001", "1002"]}
    root = write_flickr(tmp_path / "flickr30k_entities", FLICKR, splits)
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    command = [sys.executable, "-m", "adapt.run", "task=flickr30k", f"task.data_root={root}", "mode=prompt"]
    command += ["trainer=debug", "trainer.strategy=ddp", "trainer.devices=2", "trainer.accelerator=cpu"]
    command += ["data.num_workers=0", "logger=none", f"hydra.run.dir={run_dir}", *TINY_INPUT, *SHORT]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    results = check_run(run_dir)
    assert results["machine"]["processes"] == 2
    assert (results["test"]["phrases"], results["test"]["sentences"]) == (8, 4)  # 2 + 2, none twice
    entries = json.loads((run_dir / "test_grounding.json").read_text())
    assert sorted((e["image_id"], e["sentence_id"]) for e in entries) == [
        ("1001", 0),
        ("1001", 1),
        ("1001", 3),
        ("1002", 0),
    ]
