"""What a run does differently on a phrase-grounding task (``type: grounding``, docs/grounding.md).

The job (`adapt.runs.job`) builds, trains and records a grounding run as it does a detection run;
these are the parts that differ:

* :func:`build_grounding`: the data module and Lightning module of `adapt.train.grounding` (built
  from the configured ``data`` and ``module`` nodes, with the grounding classes as their targets),
  and an evaluator that scores the gathered predictions with the task's metric: Flickr30k Entities
  recall (any-box / merged-box R@1/5/10 and per phrase type, `adapt.metrics.grounding`) or RefCOCO
  precision@k (`adapt.metrics.refexp`), written for the test split in the format the metric's
  command reads (``test_grounding.json``), so ``python -m adapt.evaluate grounding`` reproduces it;
* the protocol selects on the task's ``val_metric`` (``any_box.R@1``, ``P@1``) instead of AP;
* there is no export: the export format records one caption (and prompt tuning stores that
  caption's embeddings in place of BERT), while a grounding model reads any caption. The run keeps
  its best trainable tensors in ``checkpoints/best.safetensors`` instead (adapt parameter names).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from adapt.atomic import write_json
from adapt.data.grounding import GroundingSample
from adapt.data.grounding_task import GROUNDING, GroundingDataset, GroundingTask
from adapt.metrics.grounding import PROTOCOLS, evaluate_flickr, flickr_prediction
from adapt.metrics.refexp import precision_at_k
from adapt.model import GLIP
from adapt.modes import ModePolicy
from adapt.runs.results import is_global_zero
from adapt.train.grounding import GroundingAdaptation, GroundingDataModule
from adapt.train.module import Evaluator

log = logging.getLogger(__name__)

TEST_GROUNDING = "test_grounding.json"  # the test split's ranked boxes, in the metric's results format
DATAMODULE = "adapt.train.grounding.GroundingDataModule"
MODULE = "adapt.train.grounding.GroundingAdaptation"
# Keys the module adds to an evaluation result (adapt.train.module._evaluate), not the metric's own.
_EVAL_KEYS = ("split", "step", "epoch")


def build_grounding(
    cfg: DictConfig, task: GroundingTask, model: GLIP, policy: ModePolicy, run_dir: Path, optimizer: Any
) -> tuple[GroundingDataModule, GroundingAdaptation]:
    """The data module and Lightning module of a grounding run (its folders checked before).

    ``cfg.data`` and ``cfg.module`` keep every configured argument (batch sizes, workers, seed,
    feature cache); only their targets become the grounding classes.
    """
    language = model.cfg.language
    datamodule = instantiate(cfg.data, _target_=DATAMODULE)(
        task, None, model.cfg.input, tokenizer=language.tokenizer, max_query_len=language.max_query_len
    )
    module = instantiate(cfg.module, _target_=MODULE)(
        model,
        policy,
        None,
        optimizer=optimizer,
        evaluator=grounding_evaluator(datamodule, task, run_dir),
        metric=task.val_metric,
        max_boxes=task.max_boxes,
    )
    return datamodule, module


def grounding_evaluator(datamodule: GroundingDataModule, task: GroundingTask, run_dir: Path) -> Evaluator:
    """``evaluator(split, predictions)`` for :class:`GroundingAdaptation`: the task's metric, in percent.

    The predictions (gathered from every rank) are scored against the samples they were made for;
    a run that evaluates part of a split (``trainer.limit_val_batches``) scores that part, with a
    warning, where a received results file missing captions is an error.
    """

    def evaluator(split: str, predictions: list[dict[str, Any]]) -> dict[str, Any]:
        dataset = datamodule.split(split)
        samples, entries = prediction_entries(dataset, predictions, task.metric)
        if len(samples) < len(dataset):
            log.warning(
                "%s: scored the %d of %d captions that were evaluated (trainer.limit_%s_batches)",
                dataset.where,
                len(samples),
                len(dataset),
                split,
            )
        source = f"{split} predictions of {dataset.where}"
        if task.metric == "refexp":
            metrics = precision_at_k(samples, entries, source=source)
        else:
            metrics = evaluate_flickr(samples, entries, source=source)
        if split == "test" and is_global_zero():
            write_json(entries, run_dir / TEST_GROUNDING, indent=None)
        return metrics

    return evaluator


def prediction_entries(
    dataset: GroundingDataset, predictions: Sequence[Mapping[str, Any]], metric: str
) -> tuple[list[GroundingSample], list[dict[str, Any]]]:
    """The predicted samples (dataset order) and their results entries in the metric's format.

    Flickr: MDETR's ``{image_id, sentence_id, boxes: [per phrase, ranked]}``; RefCOCO: MDETR's
    ``{image_id: entry id, boxes, scores}`` for the expression's one phrase. Boxes are in the
    original image's pixels, continuous convention (`adapt.metrics.grounding.flickr_prediction`).
    """
    by_sample: dict[int, Mapping[str, Any]] = {}
    for prediction in predictions:
        by_sample.setdefault(int(prediction["sample"]), prediction)
    samples, entries = [], []
    for index in sorted(by_sample):
        p, sample = by_sample[index], dataset.samples[index]
        entry = flickr_prediction(sample.image_id, sample.sentence_id, p["boxes"], p["size"], p["orig_size"])
        if metric == "refexp":
            first = bool(entry["boxes"])
            entry = {
                "image_id": sample.entry_id,
                "boxes": entry["boxes"][0] if first else [],
                "scores": [float(s) for s in p["scores"][0]] if first else [],
            }
        samples.append(sample)
        entries.append(entry)
    return samples, entries


def grounding_test_fields(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The ``test`` block of a grounding run's results.json: the metric's result as it is."""
    return {k: v for k, v in metrics.items() if k not in _EVAL_KEYS}


def is_grounding_record(results: Mapping[str, Any]) -> bool:
    """Whether a results.json (read as plain JSON) is a grounding run's."""
    return results.get("task_type") == GROUNDING


def _cell(value: Any) -> str:
    return "-" if value is None else f"{float(value):.2f}"


def recall_tables(results: Mapping[str, Any]) -> list[Table]:
    """The end-of-run tables of a grounding run: the protocols' recalls (or precisions), per type."""
    test = results.get("test") or {}
    title = " | ".join(f"{k}={results.get(k)}" for k in ("task", "model", "mode", "shots", "seed"))
    metric = str(results.get("val_metric") or "")
    rows = [(p, test[p]) for p in PROTOCOLS if isinstance(test.get(p), Mapping)]
    if not rows:  # RefCOCO: precision@k at the top level
        rows = [("precision", {k: v for k, v in test.items() if k.startswith("P@")})]
    keys = list(rows[0][1])
    table = Table(title=title)
    for column in ("test (%)", *keys, f"best val {metric}"):
        table.add_column(column, justify="right")
    for i, (name, row) in enumerate(rows):
        best = _cell(results.get("best_val")) if i == 0 else ""
        table.add_row(name, *(_cell(row.get(k)) for k in keys), best)
    tables = [table]
    per_type = (test.get("per_type") or {}).get(PROTOCOLS[0]) or {}
    if per_type:
        types = Table(title=f"test {PROTOCOLS[0]} recall per phrase type (%)")
        types.add_column("phrase type")
        for key in keys:
            types.add_column(key, justify="right")
        for name, row in per_type.items():
            types.add_row(str(name), *(_cell(row.get(k)) for k in keys))
        tables.append(types)
    return tables


def print_recall_tables(results: Mapping[str, Any], console: Console) -> None:
    """Print :func:`recall_tables` (`adapt.runs.summary` prints the rest of the summary)."""
    for table in recall_tables(results):
        console.print(table)
