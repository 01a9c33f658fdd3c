"""Loggers and callbacks come from the config: swapped from the command line; the CSV log survives resume."""

from __future__ import annotations

import csv
import json

import pytest
from train_helpers import compose_job

from adapt.runs.job import run_job
from adapt.train.loggers import CSVLogger
from adapt.train.module import GLIPAdaptation


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_callback_and_a_logger_from_overrides_alone(tmp_path):
    """`logger=tensorboard` and `+callbacks.<name>._target_=...`: no code knows either by name."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = compose_job(
        "mode=prompt",
        "shots=1",
        "trainer.max_steps=1",
        "logger=tensorboard",
        "+callbacks.lr_monitor._target_=lightning.pytorch.callbacks.LearningRateMonitor",
        "+callbacks.lr_monitor.logging_interval=step",
    )
    run_job(cfg, run_dir=tmp_path)
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "complete"
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    tags = set(events.Tags()["scalars"])
    assert "lr-AdamW" in tags  # written by the added callback, through the swapped-in logger
    assert {"train/total", "val/ap", "test/ap"} <= tags
    assert [e.value for e in events.Scalars("lr-AdamW")] == [pytest.approx(0.05)]  # prompt mode's lr


def test_resumed_run_keeps_every_step_of_its_metrics_csv(tmp_path, monkeypatch):
    """Killed in its second period after one more logged step, then resumed: each step once."""
    overrides = ("mode=prompt", "shots=1", "logger=csv", "trainer.max_steps=-1", "trainer.max_epochs=2")
    original = GLIPAdaptation.on_train_batch_start

    def crash_at_second_batch_of_second_period(self, batch, batch_idx):
        if self.current_epoch == 1 and batch_idx == 1:
            raise KeyError("simulated crash")
        original(self, batch, batch_idx)

    monkeypatch.setattr(GLIPAdaptation, "on_train_batch_start", crash_at_second_batch_of_second_period)
    with pytest.raises(KeyError, match="simulated crash"):
        run_job(compose_job(*overrides), run_dir=tmp_path)
    before = rows(tmp_path / "csv" / "metrics.csv")
    # the first period, its evaluation and one step of the second (after the checkpoint) were logged
    assert {r["epoch"] for r in before if r["train/total"]} == {"0", "1"}
    monkeypatch.setattr(GLIPAdaptation, "on_train_batch_start", original)
    run_job(compose_job(*overrides, "resume=true"), run_dir=tmp_path)

    after = rows(tmp_path / "csv" / "metrics.csv")
    results = json.loads((tmp_path / "results.json").read_text())
    steps = [int(r["step"]) for r in after if r["train/total"]]
    assert steps == list(range(results["val_history"][-1]["step"]))  # every step, once, in order
    assert len([r for r in after if r["val/ap"]]) == len(results["val_history"]) == 2
    assert len([r for r in after if r["test/ap"]]) == 1
    # the rows of the first period are the first attempt's own, kept (the header gained test/*)
    first_period = [r for r in before if r["epoch"] == "0"]
    assert [{k: r[k] for k in before[0]} for r in after[: len(first_period)]] == first_period


def test_csv_rows_up_to_a_checkpoint_survive_a_kill(tmp_path):
    """Rows are buffered; each checkpoint writes them, so SIGKILL loses only rows after it."""
    first = CSVLogger(tmp_path, name="csv", version="")
    for step in range(4):
        first.log_metrics({"loss": float(step)}, step=step)
    first.after_save_checkpoint(None)  # Lightning calls this after each checkpoint
    first.log_metrics({"loss": 40.0}, step=4)  # buffered, then the process is killed: no finalize
    assert [r["step"] for r in rows(tmp_path / "csv" / "metrics.csv")] == ["0", "1", "2", "3"]

    resumed = CSVLogger(tmp_path, name="csv", version="")  # continues from the checkpoint at step 3
    for step in (4, 5):
        resumed.log_metrics({"loss": 10.0 * step, "lr": 0.1}, step=step)
    resumed.finalize("success")
    got = [(r["step"], r["loss"], r["lr"]) for r in rows(tmp_path / "csv" / "metrics.csv")]
    kept = [("0", "0.0", ""), ("1", "1.0", ""), ("2", "2.0", ""), ("3", "3.0", "")]
    assert got == [*kept, ("4", "40.0", "0.1"), ("5", "50.0", "0.1")]

    restarted = CSVLogger(tmp_path, name="csv", version="")  # resume=false: the run starts over
    restarted.log_metrics({"loss": 9.0}, step=0)
    restarted.finalize("success")
    assert [(r["step"], r["loss"]) for r in rows(tmp_path / "csv" / "metrics.csv")] == [("0", "9.0")]
