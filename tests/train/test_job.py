"""`adapt.run` jobs on the embedded demo: every mode completes, failures are recorded, resume is exact."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import compose_job

from adapt.runs.job import run_job
from adapt.train.module import GLIPAdaptation

LORA_TARGETS = r"mode.policy.config.target_modules='.*dyhead_tower\.\d+\.b_attn\.attn\.(v_proj|l_proj)'"
SCHEMA = {
    *("status", "task", "model", "checkpoint", "mode", "shots", "seed", "val_history", "best_step"),
    *("best_val_ap", "test", "params", "wall_time_s", "cpu_time_s", "peak_memory_mb", "config"),
}


def read(run_dir):
    return json.loads((run_dir / "results.json").read_text())


@pytest.mark.parametrize(
    ("mode", "extra"),
    [
        ("zero", ["shots=0"]),
        ("prompt", ["shots=1"]),
        ("linear", ["shots=1", "logger=csv"]),
        ("full", ["shots=1"]),
        ("lora", ["shots=1", LORA_TARGETS]),
    ],
)
def test_each_mode_writes_a_complete_results_json(tmp_path, mode, extra):
    cfg = compose_job(f"mode={mode}", "trainer.max_steps=1", "keep_checkpoints=true", *extra)
    ap = run_job(cfg, run_dir=tmp_path)
    results = read(tmp_path)
    assert set(results) >= SCHEMA and results["status"] == "complete"
    assert results["task"] == "demo" and results["model"] == "glip_mini" and results["mode"] == mode
    assert results["test"]["ap"] == ap and set(results["test"]["per_category"]) == {"tree"}
    assert results["val_history"] and results["best_val_ap"] is not None
    assert results["params"]["total"] > results["params"]["trainable"]
    assert results["config"]["mode"]["name"] == mode and results["peak_memory_mb"] > 0
    assert results["machine"]["device"] == "cpu" and results["machine"]["torch"] == torch.__version__
    if mode == "zero":
        assert results["params"]["trainable"] == 0 and not (tmp_path / "export").exists()
    else:
        assert results["best_step"] == 1
        assert (tmp_path / "export" / "adapter_config.json").is_file()
        assert (tmp_path / "export" / "adapter_model.safetensors").is_file()
        # Resume checkpoints hold the trainable tensors only, and load with weights_only=True.
        ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
        assert {k.removeprefix("model.") for k in ckpt["state_dict"]} == set(
            load_file(tmp_path / "checkpoints" / "best.safetensors")
        )


def test_a_failed_job_is_recorded_and_its_wandb_run_closed(tmp_path):
    import wandb

    cfg = compose_job("logger=wandb", "checkpoint=/nonexistent/weights.pth")
    with pytest.raises(Exception, match="nonexistent"):
        run_job(cfg, run_dir=tmp_path)
    results = read(tmp_path)
    assert results["status"] == "failed" and "nonexistent" in results["error"]
    assert wandb.run is None


def test_resume_checkpoint_settings(tmp_path, caplog):
    from adapt.runs.resume import resume_checkpoint

    last = tmp_path / "last.ckpt"
    assert resume_checkpoint(False, last) is None and resume_checkpoint(None, last) is None
    with caplog.at_level("WARNING"):
        assert resume_checkpoint("auto", last) is None
    assert not caplog.records  # a sweep job that never trained starts quietly
    with caplog.at_level("WARNING"):
        assert resume_checkpoint(True, last) is None
    assert "does not exist" in caplog.text
    last.write_bytes(b"")
    assert resume_checkpoint(True, last) == resume_checkpoint("auto", last) == str(last)
    assert resume_checkpoint("false", last) is None
    with pytest.raises(ValueError, match="resume=sometimes is not one of false, true or auto"):
        resume_checkpoint("sometimes", last)


def test_resume_after_an_interruption_reaches_the_uninterrupted_result(tmp_path, monkeypatch):
    overrides = ("mode=linear", "shots=1", "trainer.max_steps=-1", "trainer.max_epochs=2", "seed=5")
    straight = tmp_path / "straight"
    run_job(compose_job(*overrides), run_dir=straight)

    resumed = tmp_path / "resumed"
    original = GLIPAdaptation.on_train_batch_start

    def crash_in_second_period(self, batch, batch_idx):
        if self.current_epoch == 1:
            raise KeyError("simulated crash")
        original(self, batch, batch_idx)

    monkeypatch.setattr(GLIPAdaptation, "on_train_batch_start", crash_in_second_period)
    with pytest.raises(KeyError, match="simulated crash"):
        run_job(compose_job(*overrides), run_dir=resumed)
    assert read(resumed)["status"] == "failed" and len(read(resumed)["val_history"]) == 1
    first_attempt_s = read(resumed)["wall_time_s"]  # as of its evaluation, before the checkpoint
    first_attempt_cpu_s = read(resumed)["cpu_time_s"]
    monkeypatch.setattr(GLIPAdaptation, "on_train_batch_start", original)
    run_job(compose_job(*overrides, "resume=auto"), run_dir=resumed)  # what sweeps use

    a, b = read(straight), read(resumed)
    assert b["status"] == "complete" and b["resumed"] and not a["resumed"]
    # the resumed run's time includes the first attempt's, up to the checkpoint it continued from
    assert first_attempt_s > 0 and b["wall_time_s"] > first_attempt_s
    assert first_attempt_cpu_s > 0 and b["cpu_time_s"] > first_attempt_cpu_s
    assert [(h["step"], h["ap"], h["lr"]) for h in a["val_history"]] == [
        (h["step"], h["ap"], h["lr"]) for h in b["val_history"]
    ]
    assert a["test"] == b["test"] and a["best_step"] == b["best_step"]
    # once complete, the checkpoints go (the export has the weights): resume=auto cannot continue
    # a finished run, and a sweep does not keep a full fine-tuning checkpoint per job
    assert not (straight / "checkpoints").exists() and not (resumed / "checkpoints").exists()
    ta = load_file(straight / "export" / "adapter_model.safetensors")
    tb = load_file(resumed / "export" / "adapter_model.safetensors")
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


@pytest.mark.parametrize("native", [False, True])
def test_bf16_on_a_cpu_without_a_bf16_unit_warns(monkeypatch: pytest.MonkeyPatch, native: bool):
    """bf16 is emulated (25x slower than fp32 for GLIP-T) on CPUs without AVX-512 BF16 / AMX."""
    import warnings

    from adapt.runs import precision

    monkeypatch.setattr(precision, "cpu_has_bf16_matmul", lambda: native)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert precision.resolve_precision({"precision": "bf16-mixed", "accelerator": "cpu"}) == "bf16-mixed"
        assert precision.resolve_precision({"precision": "auto", "accelerator": "cpu"}) == "32-true"
    assert [str(w.message).split(":")[0] for w in caught] == (
        [] if native else ["trainer.precision=bf16-mixed on a CPU without AVX-512 BF16 or AMX"]
    )


def test_test_before_training_is_the_zero_shot_test(tmp_path, capsys):
    """`test_before_training=true` (the demo's budget): the weights as loaded, tested before the first
    step, give exactly what a zero-shot run of the same weights gives, and the summary shows both rows."""
    common = ["model=glip_mini_pretrained", "model.arch.inference.score_threshold=0.0"]
    run_job(compose_job(*common, "mode=zero", "shots=0"), run_dir=tmp_path / "zero")
    cfg = compose_job(*common, "mode=prompt", "shots=1", "trainer.max_steps=1", "test_before_training=true")
    run_job(cfg, run_dir=tmp_path / "prompt")
    zero, prompt = read(tmp_path / "zero"), read(tmp_path / "prompt")
    assert prompt["test_before_training"] == zero["test"]
    assert prompt["test"] != zero["test"]  # one step of prompt tuning at lr 0.05 changes detections
    out = capsys.readouterr().out
    assert "before training" in out and "after training" in out


def test_a_run_started_from_a_fine_tuned_run_names_it(tmp_path, caplog, monkeypatch):
    """Issue 24 item 16: `checkpoint=<run>/export/adapter_model.safetensors` starts a run from a
    fine-tuned one. The load report called the unused class-logit head "missing", the export named
    the start only as `adapter_model.safetensors`, and predict's refusal could not say which run."""
    from adapt.detector import Detector
    from adapt.export import ExportError
    from adapt.runs.job import warn_untrained_default

    first, second = tmp_path / "first", tmp_path / "second"
    run_job(compose_job("mode=full", "shots=1", "trainer.max_steps=1"), run_dir=first)
    start = first / "export" / "adapter_model.safetensors"
    cfg = compose_job("mode=full", "shots=1", "trainer.max_steps=1", f"checkpoint={start}")
    with caplog.at_level("INFO"):
        run_job(cfg, run_dir=second)
    messages = [r.getMessage() for r in caplog.records]
    report = next(m for m in messages if m.startswith("loaded "))
    assert report.startswith("loaded no checkpoint (glip_mini's seeded random init)")
    assert f"note: then the full export {start}: " in report and "missing" not in report
    assert not any("random init" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    recorded = json.loads((second / "export" / "adapter_config.json").read_text())["base_model"]["checkpoint"]
    assert recorded["path"] == str(start) and recorded["run"] == str(first)
    assert read(second)["checkpoint"] == recorded
    with pytest.raises(ExportError, match=f"trained on checkpoint {start} \\(from the run {first}\\)"):
        Detector.from_export(second / "export")
    # given that file, the chain resolves: the first run's export on its base, the second's on top
    chained = Detector.from_export(second / "export", checkpoint=start)
    assert f"then the full export {start}" in str(chained.load_report)
    # the untrained-glip_mini warning is for glip_mini's random weights, not for trained ones
    monkeypatch.setattr("adapt.runs.job._warned_untrained", set())
    caplog.clear()
    warn_untrained_default(compose_job("task=coco", "task.data_root=/d", f"checkpoint={start}"))
    assert "untrained" not in caplog.text
    warn_untrained_default(compose_job("task=coco", "task.data_root=/d"))
    assert "model=glip_mini is an untrained miniature GLIP" in caplog.text


@pytest.mark.parametrize("mode", ["full", "linear"])
def test_a_start_from_an_export_is_the_export_on_its_base_weights(tmp_path, mode):
    """`checkpoint=<run>/export/...` of a full fine-tune with frozen Swin stages (GLIP-T's
    freeze_at=2) or of a linear probe: the export holds only the trained tensors, and everything else
    kept the random init. The start is now the model the run ended with: its base weights (the
    shipped glip_mini_pretrained file, checked by SHA-256) with the export on top, the very tensors
    Detector.from_export builds (compared exactly)."""
    from adapt.detector import Detector
    from adapt.download import require_checkpoint
    from adapt.model import build_glip
    from adapt.model.checkpoint import load_checkpoint
    from adapt.runs.job import build_model

    # patch embedding + stage 1 frozen, as GLIP-T
    frozen = ["model=glip_mini_pretrained", "model.arch.swin.freeze_at=2"]
    first = tmp_path / "first"
    run_job(compose_job(f"mode={mode}", "shots=1", "trainer.max_steps=1", *frozen), run_dir=first)
    start = first / "export" / "adapter_model.safetensors"
    exported = load_file(start)
    model, identity = build_model(compose_job("mode=zero", "shots=0", f"checkpoint={start}", *frozen))
    assert identity["run"] == str(first)
    ended = Detector.from_export(first / "export").model
    base = build_glip(model.cfg)
    load_checkpoint(base, require_checkpoint(compose_job(frozen[0]).model))
    got, want, shipped = model.state_dict(), ended.state_dict(), base.state_dict()
    assert got.keys() == want.keys()
    for name in got:
        assert torch.equal(got[name], want[name]), name
    # what the export did not hold is the shipped weights, not the random init
    untouched = [k for k in got if k not in exported and not k.startswith("head.cls_logits")]
    assert untouched and all(torch.equal(got[k], shipped[k]) for k in untouched)
    assert any(k.startswith("backbone.body.swin.embeddings") for k in untouched)


def test_a_start_from_a_prompt_export_is_refused_with_what_to_do(tmp_path):
    from adapt.export import ExportError
    from adapt.runs.job import build_model

    run_job(compose_job("mode=prompt", "shots=1", "trainer.max_steps=1"), run_dir=tmp_path / "p")
    start = tmp_path / "p" / "export" / "adapter_model.safetensors"
    refusal = r"a prompt export holds no model weights .* adapt\.predict --prompt"
    with pytest.raises(ExportError, match=refusal):
        build_model(compose_job("mode=zero", "shots=0", f"checkpoint={start}"))


def test_a_run_whose_output_is_not_a_terminal_logs_a_line_per_evaluation_period(
    tmp_path, caplog, monkeypatch
):
    """Issue 24 item 17: under nohup or SLURM an 18-minute run said nothing until its summary."""
    import re

    periods = ["trainer.max_steps=-1", "trainer.max_epochs=2", "recipe.stop_patience=1000"]
    cfg = compose_job("mode=prompt", "shots=1", *periods)
    monkeypatch.setattr("adapt.runs.job.stdout_is_terminal", lambda: False)
    with caplog.at_level("INFO", logger="adapt.runs.progress"):
        run_job(cfg, run_dir=tmp_path / "file")
    lines = [r.getMessage() for r in caplog.records if r.name == "adapt.runs.progress"]
    history = read(tmp_path / "file")["val_history"]
    assert len(lines) == len(history) >= 2
    pattern = (
        r"epoch (\d+), step (\d+): loss \d+\.\d{4}, val ap (\d+\.\d\d) "
        r"\(best \d+\.\d\d at step \d+\), \d+:\d\d:\d\d"
    )
    for line, h in zip(lines, history, strict=True):
        m = re.fullmatch(pattern, line)
        assert m, line
        assert (int(m[1]), int(m[2]), float(m[3])) == (h["epoch"], h["step"], round(h["ap"], 2))
    caplog.clear()
    monkeypatch.setattr("adapt.runs.job.stdout_is_terminal", lambda: True)  # the progress bar shows it
    with caplog.at_level("INFO", logger="adapt.runs.progress"):
        run_job(compose_job("mode=prompt", "shots=1", "trainer.max_steps=1"), run_dir=tmp_path / "terminal")
    assert not [r for r in caplog.records if r.name == "adapt.runs.progress"]
