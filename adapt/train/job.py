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
import signal
import threading
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file

from adapt import sweep
from adapt.atomic import write_json
from adapt.data import build_task
from adapt.data.validate import check_images
from adapt.download import require_checkpoint, require_dataset, sha256_of
from adapt.evaluate import detections_to_coco, evaluate
from adapt.model import GLIP, CheckpointError, GLIPConfig, build_glip, load_checkpoint
from adapt.prompt import EncodedPrompt, encode_prompt, load_tokenizer
from adapt.rundir import RunLockedError, lock_holder, run_lock
from adapt.train.config import check_config
from adapt.train.export import export_run, model_identity
from adapt.train.loggers import build_logger, close_logger
from adapt.train.modes import build_policy
from adapt.train.module import GLIPAdaptation, predictions_and_targets, trainable_counts
from adapt.train.protocol import FewShotProtocol
from adapt.train.results import (
    RunClock,
    RunRecord,
    is_global_zero,
    machine_info,
    peak_memory_mb,
    test_fields,
)
from adapt.train.summary import print_summary

log = logging.getLogger(__name__)

LAST_CKPT = "last.ckpt"
BEST_FILE = "best.safetensors"
TEST_DETECTIONS = "test_detections.json"  # the test split's detections, COCO results format


def run_job(cfg: DictConfig, run_dir: str | os.PathLike[str] | None = None) -> float | None:
    """Run one job under the sweep rules; returns the test AP (None when skipped or failed in a sweep).

    The run folder is locked for the whole job (adapt.rundir.run_lock): a second process aimed at
    it stops before it writes anything. Under DDP only rank 0 takes the lock.
    """
    folder = Path(run_dir) if run_dir is not None else (sweep.hydra_output_dir() or Path(os.getcwd()))
    _route_lightning_logs_through_root()
    if cfg.get("quiet", True):
        quiet_third_party()
    # Python warnings go through logging, so run.log keeps them next to the messages around them.
    logging.captureWarnings(True)
    if not lock_holder():
        return sweep.run_job(cfg, lambda c: train_and_evaluate(c, folder), run_dir=folder)
    try:
        with run_lock(folder):
            return sweep.run_job(cfg, lambda c: train_and_evaluate(c, folder), run_dir=folder)
    except RunLockedError as exc:
        if not sweep.in_sweep(cfg):
            raise
        log.error("%s; the sweep goes on", exc)  # that folder's own process records its result
        return None


def _route_lightning_logs_through_root() -> None:
    """Lightning adds its own console handlers; under Hydra's root handlers every line then printed
    twice. Its records now go through the root logger once: to the console and the run's run.log."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


# Third-party lines that say nothing about this run: Lightning's advertising tips, its accelerator
# inventory, the litlogger/litmodels hints. `quiet=false` shows them again.
BANNERS = ("💡 Tip", "GPU available:", "TPU available:", "HPU available:", "litlogger", "litmodels")


class _DropBanners(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(banner in message for banner in BANNERS)


def quiet_third_party() -> None:
    """Silence banners and tips (wandb's login/sync chatter, Lightning's tips) unless asked for."""
    os.environ.setdefault("WANDB_SILENT", "true")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropBanners) for f in logger.filters):
            logger.addFilter(_DropBanners())


_warned_untrained: set[str] = set()


def warn_untrained_default(cfg: DictConfig) -> None:
    """Once per process: a real task with a mini GLIP (random weights, or weights that know only
    the generated world's words) gives meaningless AP."""
    task = str(cfg.task.get("id") or cfg.task.get("name"))
    model = str(cfg.model.get("name"))
    if model not in MINI_MODELS or task == "demo" or task.startswith("world/") or task in _warned_untrained:
        return
    _warned_untrained.add(task)
    log.warning(
        "model=%s is %s: its AP on %s means nothing; choose a released model, e.g. model=glip_t",
        model,
        MINI_MODELS[model],
        task,
    )


MINI_MODELS = {
    "glip_mini": "an untrained miniature GLIP (random weights, for tests and the demo)",
    "glip_mini_pretrained": "a miniature GLIP that knows only the words of adapt's generated world",
}


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
    """``auto``: mixed precision on CUDA (the paper's AMP), full precision on CPU.

    bf16 on a CPU without a bf16 matrix unit (AVX-512 BF16 or AMX) is emulated and far slower than
    fp32 (GLIP-T inference measured 25x slower, ``benchmarks/README.md``): allowed, with a warning.
    """
    precision = str(trainer_cfg.get("precision", "auto"))
    on_gpu = trainer_cfg.get("accelerator", "auto") in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    if precision == "auto":
        return "16-mixed" if on_gpu else "32-true"
    if precision.startswith("bf16") and not on_gpu and not cpu_has_bf16_matmul():
        warnings.warn(
            f"trainer.precision={precision} on a CPU without AVX-512 BF16 or AMX: bf16 is emulated "
            "here and much slower than 32-true (see benchmarks/README.md)",
            stacklevel=2,
        )
    return precision


def cpu_has_bf16_matmul() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (torch's own capability checks)."""
    checks = (
        getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    )
    return any(check() for check in checks if check is not None)


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """The user's callbacks: every non-null node of ``cfg.callbacks``, instantiated.

    ``trainer.enable_progress_bar=false`` leaves progress-bar callbacks out, since Lightning
    refuses the pair; the flag is what a user (or ``trainer=debug``) sets to silence the bars.
    """
    from lightning.pytorch.callbacks import ProgressBar

    nodes = cfg.get("callbacks") or {}
    callbacks = [instantiate(node) for node in nodes.values() if node]
    if not cfg.trainer.get("enable_progress_bar", True):
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    return callbacks


def build_trainer(cfg: DictConfig, run_dir: Path, callbacks: list[L.Callback], logger: Any) -> L.Trainer:
    """``cfg.trainer`` instantiated, plus what only the running job knows.

    The run folder, the logger and the job's own protocol callbacks (they hold the run's record
    and checkpoint paths) exist only at run time, and ``precision: auto`` depends on the machine
    the job lands on; every other Trainer argument comes from the config as it is.
    """
    return instantiate(
        cfg.trainer,
        precision=resolve_precision(cfg.trainer),
        default_root_dir=str(run_dir),
        logger=logger if logger is not None else False,
        callbacks=[*callbacks, *build_callbacks(cfg)],
    )


# ------------------------------------------------------------------------------------------------
# The job


def resume_checkpoint(setting: Any, last: Path) -> str | None:
    """The checkpoint to continue from under `resume=false|true|auto`, or None to start afresh.

    `auto` (the default): a job requeued after a SLURM time-out or preemption, or re-run after a
    crash or Ctrl-C, continues where it stopped, while a job that never trained starts quietly;
    `true` is a user's explicit request, so a missing checkpoint is worth a warning; `false`
    starts over (Lightning then replaces the old last.ckpt).
    """
    value = str(setting).strip().lower() if setting is not None else "false"
    if value not in ("false", "true", "auto"):
        raise ValueError(f"resume must be false, true or auto, got {setting!r}")
    if value == "false":
        return None
    if last.is_file():
        log.info("continuing the interrupted attempt from %s (resume=false starts over)", last)
        return str(last)
    if value == "true":
        log.warning("resume=true but %s does not exist: starting from scratch", last)
    return None


def check_resume_file(path: Path) -> None:
    """Refuse a `last.ckpt` that is not a complete torch archive, in one sentence with the way out.

    A checkpoint torn by a full disk or a kill while Lightning wrote it (Lightning writes in place,
    not by rename) otherwise surfaces as torch's "failed finding central directory" traceback.
    The archive's CRCs are checked too (one read of the file, which the load then finds cached).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
        problem = None if bad is None else f"member {bad} fails its CRC check"
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        problem = str(exc) or type(exc).__name__
    if problem is not None:
        raise CheckpointError(
            f"{path} is truncated or corrupt ({problem}), so the run cannot resume from it: "
            "run again with resume=false to start over (it is then replaced), or delete it"
        )


class Interrupted(SIGTERMException):
    """SIGTERM outside Lightning's loops, raised at once; inside them Lightning raises its
    SIGTERMException at the next batch boundary, so a checkpoint being written is never torn."""


def _raise_on_sigterm(signum: int, frame: Any) -> None:
    # Lightning's handler calls this one too while it is installed; it then stops the run itself.
    if signal.getsignal(signal.SIGTERM) is _raise_on_sigterm:
        raise Interrupted(128 + signum)


def _record_interruption(record: RunRecord, clock: RunClock, last: Path) -> None:
    """Status "interrupted" in results.json, and the one line that says how to continue."""
    resume_from = str(last) if last.is_file() else None
    record.update(resume_from=resume_from, wall_time_s=clock.elapsed_s(), cpu_time_s=clock.cpu_s())
    record.write("interrupted")
    how = (
        f"run the same command again to continue from {last} (the last completed evaluation "
        "period; resume=false starts over instead)"
        if resume_from
        else "no evaluation period had completed, so running the command again starts it afresh"
    )
    log.warning('interrupted by SIGTERM: %s says "interrupted"; %s', record.path, how)


def train_and_evaluate(cfg: DictConfig, run_dir: Path) -> float | None:
    """The job body (see the module docstring); raises on any failure."""
    # Frozen parts run in eval mode on purpose (the official module modes, see adapt.train.modes).
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode", category=UserWarning)
    # Under DDP every rank computes the same gathered AP (module.gather_predictions), and the eval
    # sampler repeats no image (datamodule.DistributedEvalSampler): Lightning's advice is moot.
    warnings.filterwarnings("ignore", message=r".*sync_dist=True.*", category=UserWarning)
    warnings.filterwarnings(
        "ignore", message=r"Using `DistributedSampler` with the dataloaders", category=UserWarning
    )
    clock = RunClock()
    check_config(cfg)  # before anything is built: a bad value is one sentence, not an hour later
    warn_untrained_default(cfg)
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
    # conf/data is a partial: the task, its prompt and the model's input sizes are built above.
    dm = instantiate(cfg.data)(task, prompt, model.cfg.input)

    # Pre-flight: every split this run reads is opened now (annotations validated, boxes fixed,
    # image headers read) and every image decoded, so a broken test file fails before training.
    check_images(dm.split(s) for s in (("train", "val", "test") if trains else ("val", "test")))

    def evaluator(split: str, predictions: list[dict[str, Any]]) -> dict[str, Any]:
        detections, targets = predictions_and_targets(predictions)
        results = detections_to_coco(detections, targets, task.category_ids)
        if split == "test" and is_global_zero():  # what `adapt.predict --prompt <run>/export` reproduces
            write_json(results, run_dir / TEST_DETECTIONS, indent=None)
        return evaluate(dm.split(split).coco, results, max_dets=task.max_dets)

    optimizer = instantiate(cfg.mode.optimizer) if cfg.mode.get("optimizer") else None
    module = GLIPAdaptation(
        model,
        policy,
        prompt,
        optimizer=optimizer,
        evaluator=evaluator,
        seed=int(cfg.seed),
        feature_cache_mb=float(cfg.get("feature_cache_mb") or 0),
    )
    record.update(params=trainable_counts(model))

    # The job's own callbacks enforce the protocol and write into this run's folder and record,
    # so they are composed here rather than in conf/callbacks (which adds the user's).
    ckpt_dir = run_dir / "checkpoints"
    protocol = FewShotProtocol(
        ckpt_dir / BEST_FILE,
        stop_patience=int(cfg.recipe.stop_patience),
        schedule=instantiate(cfg.recipe.lr_drop),
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
    # Signal handlers can only be set from the main thread (a threaded launcher runs jobs elsewhere).
    on_main = threading.current_thread() is threading.main_thread()
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_on_sigterm) if on_main else None
    try:
        trainer = build_trainer(cfg, run_dir, callbacks, logger)
        if trains:
            resume_from = resume_checkpoint(cfg.get("resume"), ckpt_dir / LAST_CKPT)
            if resume_from is not None:
                check_resume_file(Path(resume_from))
            trainer.fit(module, datamodule=dm, ckpt_path=resume_from, weights_only=True)
            if protocol.evaluated_step != module.global_step or not protocol.history:
                trainer.validate(module, datamodule=dm, verbose=False)  # the final weights count too
            trainer.strategy.barrier("best weights written")  # by rank 0, read by every rank
            module.load_trainable(load_file(str(ckpt_dir / BEST_FILE)))
        else:
            trainer.validate(module, datamodule=dm, verbose=False)
        trainer.test(module, datamodule=dm, verbose=False)
        assert module.last_eval is not None and module.last_eval["split"] == "test"
        test = test_fields(module.last_eval)

        export_dir = None
        if trains and trainer.is_global_zero:
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
            cpu_time_s=clock.cpu_s(),
            resumed=clock.resumed,
            peak_memory_mb=peak_memory_mb(module.device),
            machine={**machine_info(module.device), "processes": trainer.world_size},
        )
        path = record.write("complete")
        if not trainer.is_global_zero:
            return test["ap"]
        if not cfg.get("keep_checkpoints", False):
            # The export holds the best weights; last.ckpt only served to resume an unfinished run
            # (and, left behind, would make `resume=auto` continue a finished one).
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        print_summary(record.data, path, export_dir)
        return test["ap"]
    except SIGTERMException:
        # Lightning's exception exits with status 0; the shell convention for SIGTERM is 143.
        _record_interruption(record, clock, ckpt_dir / LAST_CKPT)
        raise SystemExit(128 + signal.SIGTERM) from None
    finally:
        if on_main:
            signal.signal(signal.SIGTERM, previous_sigterm)
        close_logger(logger)


def _record_history(record: RunRecord, history: list[dict[str, Any]], clock: RunClock) -> None:
    """After each evaluation: keep the history and time on disk (a killed run still shows them)."""
    best = max(history, key=lambda h: h["ap"]) if history else None
    record.update(
        val_history=history,
        best_val_ap=best["ap"] if best else None,
        wall_time_s=clock.elapsed_s(),
        cpu_time_s=clock.cpu_s(),
    )
    record.write()
