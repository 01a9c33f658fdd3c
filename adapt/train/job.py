"""One ``adapt.run`` job: build everything from the composed config, train, evaluate, export, report.

Order of work (each step fails early with a message that names the fix):

1. data and weights are present (``adapt.download.require_*``);
2. the task prompt is encoded once; the model is built, its checkpoint loaded and the mode applied;
3. ``mode=zero`` evaluates val and test; a training mode fits with Lightning under the official
   protocol (one evaluation per pass over the copied few-shot set, plateau schedule, early stop,
   best-on-val weights), then tests the best weights;
4. the artifact is exported (training modes), ``results.json`` completed and an AP table printed.

The sweep rules (skip redundant or completed points, record failures so a multirun goes on) wrap
the job through :func:`adapt.sweep.run_job`.
"""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file

from adapt import sweep
from adapt.atomic import write_json
from adapt.data import build_task
from adapt.download import require_checkpoint, require_dataset, sha256_of
from adapt.evaluate import detections_to_coco, evaluate
from adapt.model import GLIP, GLIPConfig, build_glip, load_checkpoint
from adapt.prompt import EncodedPrompt, encode_prompt, load_tokenizer
from adapt.train.datamodule import TaskDataModule
from adapt.train.export import export_run, model_identity
from adapt.train.loggers import build_logger, close_logger
from adapt.train.modes import build_policy
from adapt.train.module import GLIPAdaptation, predictions_and_targets, trainable_counts
from adapt.train.protocol import FewShotProtocol
from adapt.train.results import RunClock, RunRecord, machine_info, peak_memory_mb, test_fields
from adapt.train.summary import print_summary

log = logging.getLogger(__name__)

LAST_CKPT = "last.ckpt"
BEST_FILE = "best.safetensors"
TEST_DETECTIONS = "test_detections.json"  # the test split's detections, COCO results format


def run_job(cfg: DictConfig, run_dir: str | os.PathLike[str] | None = None) -> float | None:
    """Run one job under the sweep rules; returns the test AP (None when skipped or failed in a sweep)."""
    folder = Path(run_dir) if run_dir is not None else (sweep.hydra_output_dir() or Path(os.getcwd()))
    _route_lightning_logs_through_root()
    return sweep.run_job(cfg, lambda c: train_and_evaluate(c, folder), run_dir=folder)


def _route_lightning_logs_through_root() -> None:
    """Lightning adds its own console handlers; under Hydra's root handlers every line then printed
    twice. Its records now go through the root logger once: to the console and the run's run.log."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


# ------------------------------------------------------------------------------------------------
# Building blocks


def build_model(cfg: DictConfig) -> tuple[GLIP, dict[str, Any]]:
    """The model with its weights, and the checkpoint identity recorded in results and exports."""
    arch = OmegaConf.to_container(cfg.model.arch, resolve=True)
    model = build_glip(GLIPConfig.from_dict(arch))  # type: ignore[arg-type]
    path = cfg.get("checkpoint") or require_checkpoint(cfg.model, cache=cfg.get("cache_dir"))
    if path is None:
        # No released weights (glip_mini): build_glip drew them from its fixed seed.
        return model, {"file": None, "sha256": None, "random_init_seed": 0}
    report = load_checkpoint(model, path)
    log.info("%s", report)
    configured = cfg.model.get("checkpoint", {}).get("sha256") if not cfg.get("checkpoint") else None
    return model, {"file": Path(str(path)).name, "sha256": configured or sha256_of(Path(str(path)))}


def task_prompt(task: Any, model: GLIP) -> EncodedPrompt:
    """The task's fixed caption: all categories in label order (official DISABLE_SHUFFLE training)."""
    tokenizer = load_tokenizer(model.cfg.language.tokenizer)
    return encode_prompt(
        task.class_names, tokenizer, task.caption_prompts, max_query_len=model.cfg.language.max_query_len
    )


def resolve_precision(trainer_cfg: Mapping[str, Any]) -> str:
    """``auto``: mixed precision on CUDA (the paper's AMP), full precision on CPU."""
    precision = str(trainer_cfg.get("precision", "auto"))
    if precision != "auto":
        return precision
    on_gpu = trainer_cfg.get("accelerator", "auto") in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "16-mixed" if on_gpu else "32-true"


def build_trainer(
    cfg: DictConfig, run_dir: Path, callbacks: list[L.Callback], logger: Any, max_epochs: int
) -> L.Trainer:
    from lightning.pytorch.callbacks import RichProgressBar

    t = cfg.trainer
    limit_eval = t.get("limit_eval_batches")
    limits = {} if limit_eval is None else {"limit_val_batches": limit_eval, "limit_test_batches": limit_eval}
    return L.Trainer(
        accelerator=t.get("accelerator", "auto"),
        devices=t.get("devices", 1),
        precision=resolve_precision(t),  # type: ignore[arg-type]
        max_epochs=max_epochs,
        max_steps=int(t.max_steps) if t.get("max_steps") is not None else -1,
        gradient_clip_val=t.get("gradient_clip_val"),
        gradient_clip_algorithm="norm",
        num_sanity_val_steps=0,
        check_val_every_n_epoch=1,
        **limits,
        log_every_n_steps=int(t.get("log_every_n_steps", 1)),
        logger=logger if logger is not None else False,
        callbacks=[*callbacks, RichProgressBar()] if t.get("progress_bar", True) else callbacks,
        enable_progress_bar=bool(t.get("progress_bar", True)),
        enable_model_summary=False,
        default_root_dir=str(run_dir),
    )


def max_periods(cfg: DictConfig) -> int:
    """Evaluation periods: the shots recipe's epochs, capped by ``trainer.max_epochs``."""
    epochs = int(cfg.shots.epochs)
    cap = cfg.trainer.get("max_epochs")
    return min(epochs, int(cap)) if cap is not None else epochs


# ------------------------------------------------------------------------------------------------
# The job


def resume_checkpoint(setting: Any, last: Path) -> str | None:
    """The checkpoint to continue from under `resume=false|true|auto`, or None to start afresh.

    `auto` is for sweeps: a job requeued after a SLURM time-out or preemption, or re-run after a
    crash, continues where it stopped, while a job that never trained starts quietly; `true` is a
    user's explicit request, so a missing checkpoint is worth a warning.
    """
    value = str(setting).strip().lower() if setting is not None else "false"
    if value not in ("false", "true", "auto"):
        raise ValueError(f"resume must be false, true or auto, got {setting!r}")
    if value == "false":
        return None
    if last.is_file():
        return str(last)
    if value == "true":
        log.warning("resume=true but %s does not exist: starting from scratch", last)
    return None


def train_and_evaluate(cfg: DictConfig, run_dir: Path) -> float | None:
    """The job body (see the module docstring); raises on any failure."""
    # Frozen parts run in eval mode on purpose (the official module modes, see adapt.train.modes).
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode", category=UserWarning)
    clock = RunClock()
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    record = RunRecord(run_dir, cfg)
    record.write("running")

    require_dataset(cfg.task)
    task = build_task(cfg.task)
    model, checkpoint = build_model(cfg)
    record.update(checkpoint=checkpoint)
    prompt = task_prompt(task, model)
    policy = build_policy(cfg.mode)
    trains = policy.trains
    record.update(mode_label=policy.title)
    shots = cfg.shots.k
    if trains and shots == 0:
        raise ValueError("shots=0 is zero-shot evaluation: use mode=zero (or choose shots=1,3,5,10,all)")
    dm = TaskDataModule(
        task,
        prompt,
        model.cfg.input,
        shots=shots,
        copies=int(cfg.shots.copies),
        seed=int(cfg.seed),
        batch_size=int(cfg.trainer.batch_size),
        eval_batch_size=int(cfg.trainer.eval_batch_size),
        num_workers=int(cfg.trainer.num_workers),
    )

    def evaluator(split: str, predictions: list[dict[str, Any]]) -> dict[str, Any]:
        detections, targets = predictions_and_targets(predictions)
        results = detections_to_coco(detections, targets, task.category_ids)
        if split == "test":  # what `adapt.predict --prompt <run>/export` reproduces
            write_json(results, run_dir / TEST_DETECTIONS, indent=None)
        return evaluate(dm.split(split).coco, results, max_dets=task.max_dets)

    module = GLIPAdaptation(
        model, policy, prompt, optimizer=cfg.mode.get("optimizer"), evaluator=evaluator, seed=int(cfg.seed)
    )
    record.update(params=trainable_counts(model))

    ckpt_dir = run_dir / "checkpoints"
    protocol = FewShotProtocol(
        ckpt_dir / BEST_FILE,
        stop_patience=int(cfg.shots.stop_patience),
        schedule={**dict(cfg.trainer.get("lr_drop") or {}), "patience": int(cfg.shots.step_patience)},
        on_evaluation=lambda history: _record_history(record, history, clock),
    )
    callbacks: list[L.Callback] = [protocol, clock]
    if trains:
        from lightning.pytorch.callbacks import ModelCheckpoint

        callbacks.append(
            ModelCheckpoint(
                dirpath=str(ckpt_dir),
                filename="last",
                save_last=False,
                save_top_k=1,
                every_n_epochs=1,
                save_on_train_epoch_end=True,
                enable_version_counter=False,
            )
        )
    logger = build_logger(cfg, run_dir)
    try:
        trainer = build_trainer(cfg, run_dir, callbacks, logger, max_periods(cfg))
        if trains:
            resume_from = resume_checkpoint(cfg.get("resume"), ckpt_dir / LAST_CKPT)
            trainer.fit(module, datamodule=dm, ckpt_path=resume_from, weights_only=True)
            if protocol.evaluated_step != module.global_step or not protocol.history:
                trainer.validate(module, datamodule=dm, verbose=False)  # the final weights count too
            module.load_trainable(load_file(str(ckpt_dir / BEST_FILE)))
        else:
            trainer.validate(module, datamodule=dm, verbose=False)
        trainer.test(module, datamodule=dm, verbose=False)
        assert module.last_eval is not None and module.last_eval["split"] == "test"
        test = test_fields(module.last_eval)

        export_dir = None
        if trains:
            export_dir = export_run(
                run_dir / "export",
                model,
                policy,
                module.trainable_state_dict(),
                prompt,
                model_identity(model, str(cfg.model.name), checkpoint),
                task=str(task.id),
            )
        record.update(
            val_history=protocol.history,
            best_step=protocol.best_step,
            best_val_ap=protocol.best_ap if protocol.history else None,
            test=test,
            export=str(export_dir) if export_dir is not None else None,
            skipped_batches=module.skipped_batches,
            wall_time_s=clock.elapsed_s(),
            resumed=clock.resumed,
            peak_memory_mb=peak_memory_mb(module.device),
            machine=machine_info(module.device),
        )
        path = record.write("complete")
        if not cfg.get("keep_checkpoints", False):
            # The export holds the best weights; last.ckpt only served to resume an unfinished run
            # (and, left behind, would make `resume=auto` continue a finished one).
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        print_summary(record.data, path, export_dir)
        return test["ap"]
    finally:
        close_logger(logger)


def _record_history(record: RunRecord, history: list[dict[str, Any]], clock: RunClock) -> None:
    """After each evaluation: keep the history and time on disk (a killed run still shows them)."""
    best = max(history, key=lambda h: h["ap"]) if history else None
    record.update(
        val_history=history, best_val_ap=best["ap"] if best else None, wall_time_s=clock.elapsed_s()
    )
    record.write()
