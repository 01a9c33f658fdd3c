"""One ``adapt.run`` job on a detector family (a model config with ``family:``; ``adapt.families``).

The job is GLIP's (``adapt.runs.job``): the same checks, pre-flight, Trainer, protocol callbacks,
fit, test, results.json and summary. :func:`adapt.runs.job.build` hands a family's model config to
:func:`build_family_parts`, which builds the family's pieces instead of GLIP's:

* the detector from the model config (``adapt.families.build_family``: random init, a hub
  repository or ``model.weights.path=DIR``, a ``save_pretrained`` folder); results.json's
  ``checkpoint`` is its identity (family, source, SHA-256 of the weights);
* the task prompt in the family's format (Grounding DINO's ``"a . b ."``, OWLv2's queries);
  GLIP's per-class caption prompts do not apply;
* the mode's registered policy through the family's parameter groups
  (``adapt.modes.family.FamilyPolicy``), the data as the family's processor reads it
  (``adapt.train.family_data``) and the family's LightningModule (``adapt.train.family_module``);
* AP from detections in transformers' box convention (``DetectorFamily.boxes``), and an export that
  records the family and the weights' identity (``adapt.modes.family.export_family_run``).

The job module assembles these into its ``Job`` (this module does not import it: the job's
evaluator comes in as ``evaluator_for``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from adapt.boxes import BoxConvention
from adapt.data import Task, build_task
from adapt.data.validate import check_images
from adapt.download import require_dataset
from adapt.families import DetectorFamily, FamilySpec, build_family
from adapt.modes import ModePolicy, build_policy
from adapt.modes.family import FamilyPolicy, export_family_run
from adapt.prompt import EncodedPrompt
from adapt.runs.config import ConfigError
from adapt.runs.results import RunRecord
from adapt.train.datamodule import TaskDataModule
from adapt.train.family_data import FamilyDataModule
from adapt.train.family_module import FamilyAdaptation
from adapt.train.module import Evaluator, trainable_counts

DATA_TARGET = f"{FamilyDataModule.__module__}.{FamilyDataModule.__qualname__}"

# (task, data module, the detector's box convention) -> the module's evaluator.
EvaluatorFor = Callable[[Task, TaskDataModule, BoxConvention], Evaluator]


@dataclass
class FamilyParts:
    """What a family's job builds before the protocol callbacks and the Trainer."""

    cfg: DictConfig
    task: Task
    family: DetectorFamily
    prompt: EncodedPrompt
    policy: ModePolicy
    family_policy: FamilyPolicy
    datamodule: FamilyDataModule
    module: FamilyAdaptation

    def export(self, folder: Path) -> Path:
        """The run's export in adapt's format, for the family (see the module docstring)."""
        return export_family_run(
            folder,
            self.family,
            self.family_policy,
            self.prompt,
            str(self.cfg.model.name),
            mode=str(self.cfg.mode.name),
            task=str(self.task.id),
        )


def build_family_parts(cfg: DictConfig, record: RunRecord, evaluator_for: EvaluatorFor) -> FamilyParts:
    """``adapt.runs.job.build`` for a family: checked inputs, the family under its mode, the pre-flight."""
    require_dataset(cfg.task)
    task = build_task(cfg.task)
    if not isinstance(task, Task):  # adapt.runs.config.check_config refuses this before
        raise ConfigError(f"model={cfg.model.name}: a detector family runs detection tasks only")
    spec = FamilySpec.from_config(cfg.model)
    family = build_family(spec)
    record.update(checkpoint=family.identity)
    prompt = family.encode_prompt(task.class_names)
    policy = build_policy(cfg.mode)
    record.update(mode_label=policy.title)
    family_policy = FamilyPolicy(policy, prompt, spec.lora_targets)
    # conf/data's arguments, with the family's data module (no resize: the processor's own).
    datamodule = instantiate(cfg.data, _target_=DATA_TARGET)(task, prompt, family.processor.image_processor)
    splits = ("train", "val", "test") if policy.trains else ("val", "test")
    check_images(datamodule.split(s) for s in splits)
    optimizer = instantiate(cfg.mode.optimizer) if cfg.mode.get("optimizer") else None
    evaluator = evaluator_for(task, datamodule, family.boxes)
    module = FamilyAdaptation(
        family, family_policy, prompt, optimizer=optimizer, evaluator=evaluator, seed=int(cfg.seed)
    )
    record.update(params=trainable_counts(family))
    return FamilyParts(cfg, task, family, prompt, policy, family_policy, datamodule, module)
