"""One ``adapt.run`` job: build everything from the composed config, train, evaluate, export, report.

Order of work (each step fails early with a message that names the fix):

1. :func:`build`: the config is checked, data and weights are present (``adapt.download.require_*``),
   the task prompt is encoded once, the model is built with its checkpoint and the mode applied,
   every split this run reads is opened and every image decoded (pre-flight);
2. :func:`fit_and_validate`: ``mode=zero`` evaluates val; a training mode fits with Lightning under
   the official protocol (one evaluation per pass over the copied few-shot set, plateau schedule,
   early stop, best-on-val weights), then takes the best weights back;
3. :func:`finalise`: the test split is evaluated, the artifact exported (training modes, and an
   evaluation-only mode whose detections need more than the base model: ``ModePolicy.exports``),
   ``results.json`` completed and an AP table printed.

The sweep rules (skip redundant or completed points, record failures so a multirun goes on) wrap
the job through :func:`adapt.runs.sweep.run_job`; the run folder is locked around all of it.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file

from adapt.atomic import write_json
from adapt.base_weights import load_weights
from adapt.boxes import GLIP_BOXES, BoxConvention
from adapt.data import Task, build_task
from adapt.data.grounding_task import GROUNDING, GroundingTask, is_grounding_config
from adapt.data.validate import check_images
from adapt.digest import file_sha256
from adapt.download import require_checkpoint, require_dataset
from adapt.export import model_identity
from adapt.metrics.coco import detections_to_coco, evaluate
from adapt.model import GLIP, GLIPConfig, build_glip
from adapt.modes import ModePolicy, build_policy, export_run
from adapt.prompt import EncodedPrompt, encode_prompt, load_tokenizer
from adapt.runs import sweep
from adapt.runs.claim import claim_folder
from adapt.runs.config import check_config
from adapt.runs.grounding import build_grounding, grounding_test_fields
from adapt.runs.logfilter import configure_run_logging
from adapt.runs.precision import resolve_precision
from adapt.runs.progress import ProgressLines, stdout_is_terminal
from adapt.runs.record import RESULTS_FILE
from adapt.runs.results import (
    RunClock,
    RunRecord,
    is_global_zero,
    machine_info,
    peak_memory_mb,
    test_fields,
)
from adapt.runs.resume import check_resume_file, resume_checkpoint
from adapt.runs.rundir import RunLockedError, lock_holder, run_lock
from adapt.runs.signals import EXIT_SIGTERM, sigterm_raises
from adapt.runs.storage import RunFolderError, storage_errno, unfinished_run_error
from adapt.runs.summary import print_summary
from adapt.train.checkpoint_io import AtomicCheckpointIO
from adapt.train.datamodule import TaskDataModule
from adapt.train.loggers import build_logger, close_logger
from adapt.train.module import GLIPAdaptation, predictions_and_targets, trainable_counts
from adapt.train.protocol import FewShotProtocol, metric_value
from adapt.train.workers import stop_workers, stop_workers_at_exit

if TYPE_CHECKING:
    from adapt.families import DetectorFamily

log = logging.getLogger(__name__)

LAST_CKPT = "last.ckpt"
BEST_FILE = "best.safetensors"
TEST_DETECTIONS = "test_detections.json"  # the test split's detections, COCO results format


def run_job(cfg: DictConfig, run_dir: str | os.PathLike[str] | None = None) -> float | None:
    """Run one job under the sweep rules; returns the test AP (None when skipped or failed in a sweep).

    The run folder is locked for the whole job (adapt.runs.rundir.run_lock): a second process aimed at
    it stops before it writes anything. Under DDP only rank 0 takes the lock.
    """
    folder = Path(run_dir) if run_dir is not None else (sweep.hydra_output_dir() or Path(os.getcwd()))
    configure_run_logging(quiet=bool(cfg.get("quiet", True)))
    if not lock_holder():
        return sweep.run_job(cfg, lambda c: _ending_cleanly(c, folder), run_dir=folder)
    try:
        with run_lock(folder):
            claim_folder(cfg, folder)  # Hydra's records and run.log: only now (adapt.runs.claim)
            return sweep.run_job(cfg, lambda c: _ending_cleanly(c, folder), run_dir=folder)
    except (RunLockedError, RunFolderError) as exc:
        if not sweep.in_sweep(cfg):
            raise
        log.error("%s; the sweep goes on", exc)  # that folder's own process records its result
        return None


def _ending_cleanly(cfg: DictConfig, run_dir: Path) -> float | None:
    """:func:`train_and_evaluate`; a failure stops the DataLoader workers (adapt.train.workers: else
    the process hangs at exit), and a full or read-only disk is one sentence (adapt.runs.storage)."""
    stop_workers_at_exit()
    try:
        return train_and_evaluate(cfg, run_dir)
    except Exception as exc:
        stop_workers()
        if storage_errno(exc) is None:
            raise
        raise unfinished_run_error(run_dir, exc) from exc


_warned_untrained: set[str] = set()


MINI_MODELS = {
    "glip_mini": "an untrained miniature GLIP (random weights, for tests and the demo)",
    "glip_mini_pretrained": "a miniature GLIP that knows only the words of adapt's generated world",
}


def warn_untrained_default(cfg: DictConfig) -> None:
    """Once per process: a real task with a mini GLIP (random weights, or weights that know only
    the generated world's words) gives meaningless AP."""
    task = str(cfg.task.get("id") or cfg.task.get("name"))
    model = str(cfg.model.get("name"))
    if model not in MINI_MODELS or task == "demo" or task.startswith("world/") or task in _warned_untrained:
        return
    if cfg.get("checkpoint"):
        return  # trained weights given: the AP means what those weights mean
    _warned_untrained.add(task)
    log.warning(
        "model=%s is %s: its AP on %s means nothing; choose a released model, e.g. model=glip_t",
        model,
        MINI_MODELS[model],
        task,
    )


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
    # A run's full or linear export is loaded on the weights it was trained on (adapt.base_weights).
    official = OmegaConf.to_container(cfg.model, resolve=True)
    report = load_weights(model, path, official)  # type: ignore[arg-type]
    log.info("%s", report)
    if cfg.get("checkpoint") and report.missing:
        log.warning(
            "checkpoint=%s holds no value for %d of the model's parameters (%s...): they keep their "
            "random init",
            path,
            len(report.missing),
            report.missing[0],
        )
    if not cfg.get("checkpoint"):
        configured = cfg.model.get("checkpoint", {}).get("sha256")
        return model, {"file": Path(str(path)).name, "sha256": configured or file_sha256(Path(str(path)))}
    return model, user_checkpoint_identity(Path(str(path)))


def user_checkpoint_identity(path: Path) -> dict[str, Any]:
    """A ``checkpoint=`` file as results and exports record it: name and SHA-256, plus the path the
    run was given, and where the file is a run's export (``<run>/export/adapter_model.safetensors``,
    a run started from a fine-tuned one) that run's folder, so a reader can tell which it was."""
    identity: dict[str, Any] = {"file": path.name, "sha256": file_sha256(path), "path": str(path.absolute())}
    run = path.absolute().parent.parent
    if path.parent.name == "export" and (run / RESULTS_FILE).is_file():
        identity["run"] = str(run)
    return identity


def task_prompt(task: Any, model: GLIP, policy: ModePolicy | None = None) -> EncodedPrompt:
    """The task's fixed caption: all categories in label order (official DISABLE_SHUFFLE training),
    laid out by the mode's policy (context tokens place words of their own before every name)."""
    tokenizer = load_tokenizer(model.cfg.language.tokenizer)
    encode = policy.encode_prompt if policy is not None else encode_prompt
    return encode(
        task.class_names, tokenizer, task.caption_prompts, max_query_len=model.cfg.language.max_query_len
    )


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
    # last.ckpt whole or not at all (adapt.train.checkpoint_io), unless the config chose plugins
    plugins = {} if cfg.trainer.get("plugins") else {"plugins": [AtomicCheckpointIO()]}
    return instantiate(
        cfg.trainer,
        **plugins,
        precision=resolve_precision(cfg.trainer),
        default_root_dir=str(run_dir),
        logger=logger if logger is not None else False,
        callbacks=[*callbacks, *build_callbacks(cfg)],
    )


# ------------------------------------------------------------------------------------------------
# The job


@dataclass
class Job:
    """Everything a run builds before the Trainer: what fit, test and the record work on."""

    cfg: DictConfig
    run_dir: Path
    record: RunRecord
    clock: RunClock
    task: Task | GroundingTask
    model: GLIP | DetectorFamily  # a detector family's job: adapt.runs.family_job
    checkpoint: dict[str, Any]
    prompt: EncodedPrompt | None  # None on a grounding task: every sample brings its caption
    policy: ModePolicy
    datamodule: TaskDataModule
    module: GLIPAdaptation
    protocol: FewShotProtocol
    callbacks: list[L.Callback]
    exporter: Callable[[Path], Path] | None = None  # a detector family's (adapt.runs.family_job)

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def export(self, trainer: L.Trainer) -> Path:
        """Write ``<run>/export``: what the policy exports, with the base model it belongs to."""
        if self.exporter is not None:
            return self.exporter(self.run_dir / "export")
        assert isinstance(self.model, GLIP) and self.prompt is not None
        return export_run(
            self.run_dir / "export",
            self.model,
            self.policy,
            self.module.trainable_state_dict(),
            self.prompt,
            model_identity(self.model, str(self.cfg.model.name), self.checkpoint),
            mode=sweep.hydra_choices().get("mode") or str(self.cfg.mode.name),  # linear_cached: its own name
            task=str(self.task.id),
            eval_batch_size=max(self.datamodule.eval_batch_size // trainer.world_size, 1),  # per process
        )


def build(cfg: DictConfig, run_dir: Path, record: RunRecord, clock: RunClock) -> Job:
    """Steps 1-2 of the module docstring: the checked inputs, the model under its mode, the pre-flight."""
    if cfg.model.get("family") is not None:  # a detector family's model config (adapt.families)
        return build_family_job(cfg, run_dir, record, clock)
    if not is_grounding_config(cfg.task):  # a grounding task checks its own folders (how to get them)
        require_dataset(cfg.task)
    task = build_task(cfg.task)
    if isinstance(task, GroundingTask):
        task.check_files()  # the annotations and images, or one sentence on how to get them
    model, checkpoint = build_model(cfg)
    record.update(checkpoint=checkpoint)
    policy = build_policy(cfg.mode)
    record.update(mode_label=policy.title)
    optimizer = instantiate(cfg.mode.optimizer) if cfg.mode.get("optimizer") else None
    prompt: EncodedPrompt | None = None
    datamodule: TaskDataModule
    module: GLIPAdaptation
    if isinstance(task, GroundingTask):
        datamodule, module = build_grounding(cfg, task, model, policy, run_dir, optimizer)
        record.update(task_type=GROUNDING, val_metric=task.val_metric)
    else:
        prompt = task_prompt(task, model, policy)
        datamodule, module = _detection_parts(cfg, task, model, prompt, policy, run_dir, optimizer)
    # Pre-flight: every split this run reads is opened now (annotations validated, boxes fixed,
    # image headers read) and every image decoded, so a broken test file fails before training.
    splits = ("train", "val", "test") if policy.trains else ("val", "test")
    check_images(datamodule.split(s) for s in splits)
    record.update(params=trainable_counts(model))
    metric = task.val_metric if isinstance(task, GroundingTask) else "ap"  # what the protocol selects on
    protocol, callbacks = protocol_callbacks(cfg, run_dir, record, clock, policy.trains, metric)
    return Job(
        cfg,
        run_dir,
        record,
        clock,
        task,
        model,
        checkpoint,
        prompt,
        policy,
        datamodule,
        module,
        protocol,
        callbacks,
    )


def build_family_job(cfg: DictConfig, run_dir: Path, record: RunRecord, clock: RunClock) -> Job:
    """:func:`build` for a detector family: its parts (``adapt.runs.family_job``), this job's
    evaluator and protocol callbacks, and the family's export."""
    from adapt.runs.family_job import build_family_parts

    parts = build_family_parts(cfg, record, lambda task, dm, boxes: coco_evaluator(task, dm, run_dir, boxes))
    protocol, callbacks = protocol_callbacks(cfg, run_dir, record, clock, parts.policy.trains)
    return Job(
        cfg,
        run_dir,
        record,
        clock,
        parts.task,
        parts.family,
        parts.family.identity,
        parts.prompt,
        parts.policy,
        parts.datamodule,
        parts.module,
        protocol,
        callbacks,
        exporter=parts.export,
    )


def _detection_parts(
    cfg: DictConfig,
    task: Task,
    model: GLIP,
    prompt: EncodedPrompt,
    policy: ModePolicy,
    run_dir: Path,
    optimizer: Any,
) -> tuple[TaskDataModule, GLIPAdaptation]:
    """The data module and Lightning module of a detection run, the evaluator computing COCO AP."""
    # conf/data is a partial: the task, its prompt and the model's input sizes are built above.
    datamodule = instantiate(cfg.data)(task, prompt, model.cfg.input)
    evaluator = coco_evaluator(task, datamodule, run_dir, GLIP_BOXES)
    module = instantiate(cfg.module)(model, policy, prompt, optimizer=optimizer, evaluator=evaluator)
    return datamodule, module


def coco_evaluator(
    task: Task, datamodule: TaskDataModule, run_dir: Path, boxes: BoxConvention
) -> Callable[[str, list[dict[str, Any]]], dict[str, Any]]:
    """The module's evaluator: a split's collected detections -> COCO AP (boxes written in the
    detector's convention, ``adapt.boxes``); the test split's detections are kept in the run folder."""

    def evaluator(split: str, predictions: list[dict[str, Any]]) -> dict[str, Any]:
        detections, targets = predictions_and_targets(predictions)
        results = detections_to_coco(detections, targets, task.category_ids, boxes=boxes)
        if split == "test" and is_global_zero():  # what `adapt.predict --prompt <run>/export` reproduces
            write_json(results, run_dir / TEST_DETECTIONS, indent=None)
        return evaluate(datamodule.split(split).coco, results, max_dets=task.max_dets)

    return evaluator


def protocol_callbacks(
    cfg: DictConfig, run_dir: Path, record: RunRecord, clock: RunClock, trains: bool, metric: str = "ap"
) -> tuple[FewShotProtocol, list[L.Callback]]:
    """The job's own callbacks: they enforce the protocol and write into this run's folder and
    record, so they get their run-time arguments here (conf/recipe and conf/config.yaml hold the
    rest). ``metric``: what the protocol selects on (detection AP; a grounding task's own)."""
    ckpt_dir = run_dir / "checkpoints"
    protocol = instantiate(cfg.recipe.protocol)(
        best_path=ckpt_dir / BEST_FILE,
        on_evaluation=lambda history: _record_history(record, history, clock, metric),
        metric=metric,
    )
    callbacks: list[L.Callback] = [protocol, clock]
    if trains and not stdout_is_terminal():  # nohup, SLURM: a line per evaluation period
        callbacks.append(ProgressLines(protocol, metric))
    if trains:
        callbacks.append(instantiate(cfg.last_checkpoint)(dirpath=str(ckpt_dir)))
    return protocol, callbacks


def fit_and_validate(job: Job, trainer: L.Trainer) -> None:
    """Step 2: train under the protocol (or only validate, zero-shot), then keep the best weights."""
    module, dm, protocol = job.module, job.datamodule, job.protocol
    if not job.policy.trains:
        trainer.validate(module, datamodule=dm, verbose=False)
        return
    resume_from = resume_checkpoint(job.cfg.get("resume"), job.checkpoint_dir / LAST_CKPT)
    if resume_from is not None:
        check_resume_file(Path(resume_from))
    elif job.cfg.get("test_before_training") and job.prompt is not None:
        # The weights as loaded, on the test split: the zero-shot AP the trained one is set against.
        trainer.test(module, datamodule=dm, verbose=False)
        job.record.update(test_before_training=test_fields(module.last_eval or {}))
        job.record.write()
    trainer.fit(module, datamodule=dm, ckpt_path=resume_from, weights_only=True)
    if protocol.evaluated_step != module.global_step or not protocol.history:
        trainer.validate(module, datamodule=dm, verbose=False)  # the final weights count too
    trainer.strategy.barrier("best weights written")  # by rank 0, read by every rank
    module.load_trainable(load_file(str(job.checkpoint_dir / BEST_FILE)))


def finalise(job: Job, trainer: L.Trainer) -> float | None:
    """Step 3: test the best weights, export them, complete results.json and print the summary."""
    trainer.test(job.module, datamodule=job.datamodule, verbose=False)
    last = job.module.last_eval
    if last is None or last.get("split") != "test":
        raise RuntimeError("the test split produced no evaluation")  # refused before training otherwise
    # A grounding run exports nothing: the export format records one caption (adapt.runs.grounding).
    test = test_fields(last) if job.prompt is not None else grounding_test_fields(last)
    export_dir = None
    if job.policy.exports and trainer.is_global_zero and job.prompt is not None:
        export_dir = job.export(trainer)
    protocol = job.protocol
    job.record.update(
        val_history=protocol.history,
        best_step=protocol.best_step,
        **{_best_key(protocol.metric): protocol.best_ap if protocol.history else None},
        test=test,
        export=str(export_dir) if export_dir is not None else None,
        skipped_batches=job.module.skipped_batches,
        wall_time_s=job.clock.elapsed_s(),
        cpu_time_s=job.clock.cpu_s(),
        resumed=job.clock.resumed,
        peak_memory_mb=peak_memory_mb(job.module.device),
        machine={**machine_info(job.module.device), "processes": trainer.world_size},
    )
    path = job.record.write("complete")
    if trainer.is_global_zero:
        if not job.cfg.get("keep_checkpoints", False) and job.prompt is not None:
            # The export holds the best weights; last.ckpt only served to resume an unfinished run
            # (and, left behind, would make `resume=auto` continue a finished one).
            shutil.rmtree(job.checkpoint_dir, ignore_errors=True)
        elif not job.cfg.get("keep_checkpoints", False):
            (job.checkpoint_dir / LAST_CKPT).unlink(missing_ok=True)  # no export: best.safetensors stays
        print_summary(job.record.data, path, export_dir)
    return metric_value(test, protocol.metric)


def train_and_evaluate(cfg: DictConfig, run_dir: Path) -> float | None:
    """The job body (see the module docstring); raises on any failure."""
    clock = RunClock()
    check_config(cfg)  # before anything is built: a bad value is one sentence, not an hour later
    warn_untrained_default(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    record = RunRecord(run_dir, cfg)
    record.write("running")
    job = build(cfg, run_dir, record, clock)
    logger = build_logger(cfg, run_dir)
    try:
        with sigterm_raises():
            trainer = build_trainer(cfg, run_dir, job.callbacks, logger)
            fit_and_validate(job, trainer)
            return finalise(job, trainer)
    except SIGTERMException:
        # Lightning's exception exits with status 0; the shell convention for SIGTERM is 143.
        _record_interruption(record, clock, job.checkpoint_dir / LAST_CKPT)
        raise SystemExit(EXIT_SIGTERM) from None
    finally:
        close_logger(logger)


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


def _record_history(
    record: RunRecord, history: list[dict[str, Any]], clock: RunClock, metric: str = "ap"
) -> None:
    """After each evaluation: keep the history and time on disk (a killed run still shows them)."""
    best = max(history, key=lambda h: h[metric]) if history else None
    record.update(
        val_history=history,
        **{_best_key(metric): best[metric] if best else None},
        wall_time_s=clock.elapsed_s(),
        cpu_time_s=clock.cpu_s(),
    )
    record.write()


def _best_key(metric: str) -> str:
    """results.json's best validation field: ``best_val_ap`` (detection), ``best_val`` otherwise."""
    return "best_val_ap" if metric == "ap" else "best_val"
