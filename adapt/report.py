"""Sweep report: `python -m adapt.report SWEEP_DIR` turns a folder of results.json into the paper's tables.

What it writes (into SWEEP_DIR/report unless --out says otherwise):
  report.md   ODinW-13 average (mode x shots) and one table per mode (dataset x shots), ours as
              mean ± std over seeds next to the paper's figures for the same model, then the
              failed, interrupted and missing jobs;
  report.csv  the same numbers in long form (one row per model x task x mode x shots);
  jobs.csv    every expected or found job with its status, folder and error;
  plots/      AP against shots per mode, ours solid, the paper's dashed.

The expected grid comes from the multirun.yaml files Hydra leaves in the sweep folder, collapsed
by the same rule the jobs use (`adapt.sweep.point_skip_reason`), so a job that was never launched
is reported as missing rather than silently absent from an average. An average over ODinW-13 is
only given when all 13 datasets have a value; otherwise the report names the missing ones.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import math
import os
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from adapt.atomic import write_text
from adapt.sweep import (
    ALL_SHOTS,
    RESULTS_FILE,
    ZERO_MODE,
    GridPoint,
    Shots,
    canonical_seed,
    grid_point,
    in_sweep,
    normalize_shots,
    point_skip_reason,
    read_results,
    shots_sort_key,
)

# The 13 datasets in the paper's column order (glip_spec.md 5.3), with the spellings a task name
# may use: the paper's, the official yaml/folder name, and short forms.
ODINW13: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("PascalVOC", ("pascalvoc", "voc", "pascal")),
    ("AerialDrone", ("aerialdrone", "aerialmaritimedrone", "aerialmaritimedronelarge", "aerial", "drone")),
    ("Aquarium", ("aquarium", "aquariumcombined", "aquariumaquariumcombinedv2raw1024coco")),
    ("Rabbits", ("rabbits", "rabbit", "cottontailrabbits")),
    ("EgoHands", ("egohands", "egohandsgeneric", "ego")),
    ("Mushrooms", ("mushrooms", "mushroom", "northamericamushrooms")),
    ("Packages", ("packages", "package", "packagesraw")),
    ("Raccoon", ("raccoon", "raccoonv2raw", "raccoonraccoonv2rawcoco")),
    ("Shellfish", ("shellfish", "shellfishopenimages", "shellfishopenimagesraw")),
    ("Vehicles", ("vehicles", "vehicle", "vehiclesopenimages", "vehiclesopenimages416x416")),
    ("Pistols", ("pistols", "pistol", "pistolsexport")),
    ("Pothole", ("pothole", "potholes")),
    ("Thermal", ("thermal", "thermaldogsandpeople")),
)
ODINW13_KEYS: tuple[str, ...] = tuple(key for key, _ in ODINW13)
_ALIASES = {alias: key for key, aliases in ODINW13 for alias in (key.lower(), *aliases)}

# Paper model names and what points at them: checkpoint files first (glip_spec.md 5.1), because
# a config name says less about which weights ran than the file does.
PAPER_MODELS = ("GLIP-T (A)", "GLIP-T (B)", "GLIP-T (C)", "GLIP-T", "GLIP-L")
_CHECKPOINT_TO_PAPER = {
    "glip_a_tiny_o365": "GLIP-T (A)",
    "glip_tiny_model_o365": "GLIP-T (B)",
    "glip_tiny_model_o365_goldg": "GLIP-T (C)",
    "glip_tiny_model_o365_goldg_lvisbest": "GLIP-T (C)",
    # The released GLIP-T (CC3M+SBU) is not the paper's GLIP-T (Cap4M, unreleased); the paper's
    # GLIP-T row is still the nearest published reference for it.
    "glip_tiny_model_o365_goldg_cc_sbu": "GLIP-T",
    "glip_tiny_model_o365_goldg_cc_sbu_lvisbest": "GLIP-T",
    "glip_large_model": "GLIP-L",
    "glip_large_model_lvisbest": "GLIP-L",
}
_MODEL_NAME_TO_PAPER = {
    "glipta": "GLIP-T (A)",
    "glipa": "GLIP-T (A)",
    "glipatiny": "GLIP-T (A)",
    "gliptb": "GLIP-T (B)",
    "glipb": "GLIP-T (B)",
    "gliptc": "GLIP-T (C)",
    "glipc": "GLIP-T (C)",
    "glipt": "GLIP-T",
    "gliptiny": "GLIP-T",
    "glipl": "GLIP-L",
    "gliplarge": "GLIP-L",
}

MODE_ORDER = (ZERO_MODE, "prompt", "linear", "full", "lora")
MODE_TITLES = {
    ZERO_MODE: "zero-shot",
    "prompt": "prompt tuning",
    "linear": "linear probing",
    "full": "full-model fine-tuning",
    "lora": "LoRA",
}
PAPER_SHOTS: tuple[Shots, ...] = (0, 1, 3, 5, 10, ALL_SHOTS)

# Statuses of a job in jobs.csv, in the order the report lists them.
COMPLETE, FAILED, RUNNING, NO_RESULTS, MISSING = "complete", "failed", "running", "no_results", "missing"


def _squash(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


def dataset_key(task: str) -> str | None:
    """The paper's column for a task name ("odinw/aquarium" -> "Aquarium"), None if not ODinW-13."""
    last = task.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    return _ALIASES.get(_squash(last))


def paper_model_for(model: str, checkpoint: str | None = None) -> str | None:
    """Which paper model's numbers to put next to ours, from the checkpoint file or model name."""
    if checkpoint:
        stem = Path(checkpoint).name.split(".", 1)[0].lower()
        if stem in _CHECKPOINT_TO_PAPER:
            return _CHECKPOINT_TO_PAPER[stem]
    if model in PAPER_MODELS:
        return model
    return _MODEL_NAME_TO_PAPER.get(_squash(model))


# --------------------------------------------------------------------------------------------
# Paper reference data (benchmarks/odinw/*.csv)


@dataclass
class PaperReference:
    """The paper's ODinW-13 numbers: per dataset (Tables 14-16) and averages ± std (Tables 11-14)."""

    per_dataset: dict[tuple[str, str, Shots], dict[str, float]] = field(default_factory=dict)
    average: dict[tuple[str, str, Shots], tuple[float, float | None]] = field(default_factory=dict)
    source: Path | None = None

    def dataset(self, model: str | None, mode: str, shots: Shots, key: str | None) -> float | None:
        if model is None or key is None:
            return None
        return self.per_dataset.get((model, mode, shots), {}).get(key)

    def table_average(self, model: str | None, mode: str, shots: Shots) -> float | None:
        """The Avg column of the per-dataset table (Tables 14-16), consistent with its cells."""
        if model is None:
            return None
        return self.per_dataset.get((model, mode, shots), {}).get("avg")

    def headline(self, model: str | None, mode: str, shots: Shots) -> tuple[float, float | None] | None:
        """The average ± std of Tables 11-14 (the std exists only there)."""
        return None if model is None else self.average.get((model, mode, shots))


PER_DATASET_CSV = "paper_per_dataset.csv"
AVERAGE_CSV = "paper_average.csv"


def paper_data_dir() -> Path | None:
    """Where the shipped paper CSVs are: $ADAPT_PAPER_DIR, the package, or the source checkout."""
    candidates = []
    if os.environ.get("ADAPT_PAPER_DIR"):
        candidates.append(Path(os.environ["ADAPT_PAPER_DIR"]))
    here = Path(__file__).resolve().parent
    candidates += [here / "resources" / "paper", here.parent / "benchmarks" / "odinw"]
    for candidate in candidates:
        if (candidate / PER_DATASET_CSV).is_file():
            return candidate
    return None


def _float_or_none(text: str | None) -> float | None:
    text = (text or "").strip()
    return float(text) if text else None


def load_paper(directory: str | os.PathLike[str] | None = None) -> PaperReference:
    """Read the paper's tables; an empty reference when no data is found (the report says so)."""
    root = Path(directory) if directory is not None else paper_data_dir()
    ref = PaperReference(source=root)
    if root is None:
        return ref
    with (root / PER_DATASET_CSV).open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            key = (row["model"], row["mode"], normalize_shots(row["shots"]))
            values = {k: float(row[k]) for k in (*ODINW13_KEYS, "avg") if row.get(k, "").strip()}
            ref.per_dataset[key] = values
    avg_path = root / AVERAGE_CSV
    if avg_path.is_file():
        with avg_path.open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                key = (row["model"], row["mode"], normalize_shots(row["shots"]))
                ref.average[key] = (float(row["avg"]), _float_or_none(row.get("std")))
    return ref


# --------------------------------------------------------------------------------------------
# Collecting jobs


@dataclass
class Job:
    """One run folder (or one expected job without a folder)."""

    point: GridPoint
    status: str
    ap: float | None = None
    path: Path | None = None
    error: str | None = None
    checkpoint: str | None = None
    note: str | None = None


_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _load_yaml(path: Path) -> dict[str, Any] | None:
    try:
        with path.open(encoding="utf-8") as f:
            data = yaml.load(f, Loader=_YAML_LOADER)
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def _saved_choices(run_dir: Path) -> dict[str, Any]:
    """The config-group choices Hydra saved for the job: the names the sweep's grid is made of."""
    saved = _load_yaml(run_dir / ".hydra" / "hydra.yaml") or {}
    choices = ((saved.get("hydra") or {}).get("runtime") or {}).get("choices") or {}
    return {k: v for k, v in choices.items() if v is not None}


def _point_from_results(data: Mapping[str, Any], run_dir: Path) -> GridPoint | None:
    """Grid coordinates of a results.json.

    Hydra's saved choices win over the file's own fields where both exist, so a job matches the
    expected grid even if the training job wrote, say, a display name into "task".
    """
    choices = _saved_choices(run_dir)
    try:
        return GridPoint(
            task=str(choices.get("task") or data["task"]),
            model=str(choices.get("model") or data["model"]),
            mode=str(choices.get("mode") or data["mode"]),
            shots=normalize_shots(choices.get("shots") or data["shots"]),
            seed=int(data["seed"]),
        )
    except (KeyError, TypeError, ValueError):
        pass
    for cfg in (data.get("config"), _load_yaml(run_dir / ".hydra" / "config.yaml")):
        if isinstance(cfg, Mapping):
            try:
                return grid_point(OmegaConf.create(dict(cfg)), choices)
            except (KeyError, ValueError):
                continue
    return None


def _test_ap(data: Mapping[str, Any]) -> float | None:
    test = data.get("test")
    value = test.get("ap") if isinstance(test, Mapping) else None
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _checkpoint_file(data: Mapping[str, Any]) -> str | None:
    ckpt = data.get("checkpoint")
    if isinstance(ckpt, Mapping):
        return ckpt.get("file")
    return ckpt if isinstance(ckpt, str) else None


def collect_jobs(sweep_dir: str | os.PathLike[str]) -> tuple[list[Job], list[str]]:
    """Every run folder under `sweep_dir`: those with results.json, and started ones without.

    Folders of redundant grid points (Hydra creates one for every point, including the ones the
    job skips at once) are recognised from their saved config and left out.
    """
    root = Path(sweep_dir)
    jobs: list[Job] = []
    warnings: list[str] = []
    seen_dirs: set[Path] = set()
    for results_path in sorted(root.rglob(RESULTS_FILE)):
        run_dir = results_path.parent
        seen_dirs.add(run_dir)
        data = read_results(run_dir)
        if data is None:
            warnings.append(f"unreadable {results_path}")
            continue
        point = _point_from_results(data, run_dir)
        if point is None:
            warnings.append(f"cannot tell task/model/mode/shots/seed of {results_path}")
            continue
        status = str(data.get("status", RUNNING))
        ap = _test_ap(data)
        note = None
        if status == COMPLETE and ap is None:
            status, note = FAILED, "status complete but no test.ap"
        error = data.get("error")
        jobs.append(
            Job(
                point=point,
                status=status if status in (COMPLETE, FAILED, RUNNING) else RUNNING,
                ap=ap if status == COMPLETE else None,
                path=run_dir,
                error=str(error) if error else note,
                checkpoint=_checkpoint_file(data),
                note=note or (f"started {data['started_at']}" if data.get("started_at") else None),
            )
        )
    for cfg_path in sorted(root.rglob(".hydra/config.yaml")):
        run_dir = cfg_path.parent.parent
        if run_dir in seen_dirs:
            continue
        cfg = _load_yaml(cfg_path)
        if cfg is None:
            continue
        try:
            conf = OmegaConf.create(cfg)
            point = grid_point(conf, _saved_choices(run_dir))
        except (KeyError, ValueError):
            continue
        if in_sweep(conf) and point_skip_reason(point, canonical_seed(cfg)) is not None:
            continue
        jobs.append(Job(point=point, status=NO_RESULTS, path=run_dir, note="started, no results.json"))
    return _dedupe(jobs, warnings), warnings


def _dedupe(jobs: list[Job], warnings: list[str]) -> list[Job]:
    """One job per grid point: a complete one wins, then the most recently written folder."""
    rank = {COMPLETE: 0, FAILED: 1, RUNNING: 2, NO_RESULTS: 3, MISSING: 4}
    by_point: dict[GridPoint, list[Job]] = defaultdict(list)
    for job in jobs:
        by_point[job.point].append(job)
    out = []
    for point, group in by_point.items():
        if len(group) > 1:
            warnings.append(
                f"{len(group)} folders for {_describe(point)}: " + ", ".join(str(j.path) for j in group)
            )
        group.sort(key=lambda j: (rank[j.status], -_mtime(j.path)))
        out.append(group[0])
    return out


def _mtime(path: Path | None) -> float:
    try:
        return (path / RESULTS_FILE).stat().st_mtime if path else 0.0
    except OSError:
        return 0.0


# --------------------------------------------------------------------------------------------
# The expected grid


_GRID_KEYS = {"task": "task", "task.name": "task", "shots": "shots", "shots.k": "shots", "mode": "mode"}
_GRID_KEYS |= {"mode.name": "mode", "seed": "seed", "model": "model", "model.name": "model"}


def _strip_quotes(text: str) -> str:
    return text.strip().strip("'\"")


def _override_values(text: str) -> tuple[str, list[str]] | None:
    """Parse one Hydra override ("seed=3,30,300") into its key and the values it sweeps."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    (override,) = OverridesParser.create().parse_overrides([text])
    if override.is_sweep_override():
        values = [_strip_quotes(v) for v in override.sweep_string_iterator()]  # glob() raises here
    else:
        values = [_strip_quotes(override.get_value_element_as_str())]
    return override.key_or_group, values


def grid_from_multirun(path: str | os.PathLike[str]) -> tuple[set[GridPoint], list[str]]:
    """The jobs a sweep asked for, from the multirun.yaml Hydra saved in its folder.

    The grid is the sweep yaml's `hydra.sweeper.params` with the command line's overrides on top
    (as Hydra's basic sweeper does), defaults from the composed config, then collapsed by the
    protocol rule when the sweep opted in with `+sweep=...`.
    """
    cfg = _load_yaml(Path(path))
    if cfg is None:
        return set(), [f"unreadable {path}"]
    hydra = cfg.get("hydra") or {}
    axes: dict[str, list[str]] = {}
    sources = [f"{k}={v}" for k, v in ((hydra.get("sweeper") or {}).get("params") or {}).items()]
    sources += list((hydra.get("overrides") or {}).get("task") or [])
    for text in sources:
        try:
            parsed = _override_values(" ".join(str(text).split()))
        except Exception as exc:  # glob() sweeps and anything else we cannot enumerate
            key = str(text).split("=", 1)[0].lstrip("+~")
            if key in _GRID_KEYS:
                return set(), [f"{path}: cannot enumerate '{text}' ({exc}); missing jobs not listed"]
            continue
        if parsed is not None and parsed[0] in _GRID_KEYS:
            axes[_GRID_KEYS[parsed[0]]] = parsed[1]
    choices = (hydra.get("runtime") or {}).get("choices") or {}
    conf = OmegaConf.create({k: v for k, v in cfg.items() if k != "hydra"})
    # shots is a plain value; sweeps made while it was a config group hold `shots.k`
    shots_key = "shots.k" if OmegaConf.is_dict(conf.get("shots")) else "shots"
    fallback = {
        "task": choices.get("task") or OmegaConf.select(conf, "task.id", default=None),
        "shots": choices.get("shots") or OmegaConf.select(conf, shots_key, default=None),
        "mode": choices.get("mode") or OmegaConf.select(conf, "mode.name", default=None),
        "model": choices.get("model") or OmegaConf.select(conf, "model.name", default=None),
        "seed": OmegaConf.select(conf, "seed", default=None),
    }
    for key, value in fallback.items():
        if key not in axes and value is not None:
            axes[key] = [str(value)]
    lacking = [k for k in ("task", "model", "mode", "shots", "seed") if k not in axes]
    if lacking:
        return set(), [f"{path}: no values for {lacking}; missing jobs not listed"]
    protocol = isinstance(cfg.get("sweep"), Mapping)
    canonical = canonical_seed(cfg)
    points = set()
    for task, model, mode, shots, seed in itertools.product(
        axes["task"], axes["model"], axes["mode"], axes["shots"], axes["seed"]
    ):
        point = GridPoint(task, model, mode, normalize_shots(shots), int(seed))
        if not protocol or point_skip_reason(point, canonical) is None:
            points.add(point)
    return points, []


def expected_grid(sweep_dir: str | os.PathLike[str]) -> tuple[set[GridPoint], list[str]]:
    """The union of the grids of every multirun.yaml under `sweep_dir`."""
    points: set[GridPoint] = set()
    warnings: list[str] = []
    for path in sorted(Path(sweep_dir).rglob("multirun.yaml")):
        found, warn = grid_from_multirun(path)
        points |= found
        warnings += warn
    return points, warnings


# --------------------------------------------------------------------------------------------
# Aggregation


@dataclass
class Cell:
    """AP of one model x task x mode x shots over seeds."""

    values: dict[int, float]
    expected_seeds: int = 0

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values.values())

    def std(self, ddof: int = 0) -> float | None:
        if len(self.values) < max(2, ddof + 1):
            return None
        vals = list(self.values.values())
        return statistics.pstdev(vals) if ddof == 0 else statistics.stdev(vals)

    @property
    def partial(self) -> bool:
        return self.n < self.expected_seeds


@dataclass
class Average:
    """The average over a dataset suite for one mode x shots, or the reason there is none."""

    mean: float | None
    std: float | None
    missing: list[str]
    seeds: list[int]


@dataclass
class ModelReport:
    """Everything the tables and plots need for one model."""

    model: str
    paper_model: str | None
    tasks: list[str]
    modes: list[str]
    shots: list[Shots]
    mode_shots: dict[str, list[Shots]]  # the shots each mode has jobs for
    cells: dict[tuple[str, str, Shots], Cell]
    averages: dict[tuple[str, str], Average]  # (mode, shots as str)
    suite: str  # "ODinW-13" or "mean over N tasks"
    suite_keys: list[str]


@dataclass
class Report:
    sweep_dir: Path
    jobs: list[Job]
    models: list[ModelReport]
    paper: PaperReference
    warnings: list[str]
    ddof: int = 0

    def by_status(self, status: str) -> list[Job]:
        return sorted((j for j in self.jobs if j.status == status), key=lambda j: _job_sort_key(j.point))


def _job_sort_key(point: GridPoint) -> tuple[Any, ...]:
    return (
        point.model,
        _task_sort_key(point.task),
        _mode_rank(point.mode),
        shots_sort_key(point.shots),
        point.seed,
    )


def _mode_rank(mode: str) -> tuple[int, str]:
    return (MODE_ORDER.index(mode), "") if mode in MODE_ORDER else (len(MODE_ORDER), mode)


def _task_sort_key(task: str) -> tuple[int, str]:
    key = dataset_key(task)
    return (ODINW13_KEYS.index(key), task) if key else (len(ODINW13_KEYS), task)


def _suite_key(task: str, odinw: bool) -> str:
    return (dataset_key(task) or task) if odinw else task


def _average(
    cells: Mapping[tuple[str, str, Shots], Cell],
    tasks: Sequence[str],
    suite_keys: Sequence[str],
    mode: str,
    shots: Shots,
    odinw: bool,
    ddof: int,
) -> Average:
    """Equal-weight mean over the suite (glip_spec.md 4.6); std over seeds of per-seed averages."""
    per_key: dict[str, Cell] = {}
    for task in tasks:
        cell = cells.get((task, mode, shots))
        key = _suite_key(task, odinw)
        if cell is not None and cell.n and key in suite_keys and key not in per_key:
            per_key[key] = cell
    missing = [k for k in suite_keys if k not in per_key]
    if missing:
        return Average(None, None, missing, [])
    mean = statistics.fmean(c.mean for c in per_key.values())
    common = sorted(set.intersection(*(set(c.values) for c in per_key.values())))
    per_seed = [statistics.fmean(c.values[s] for c in per_key.values()) for s in common]
    std = Cell(dict(zip(common, per_seed, strict=True))).std(ddof) if per_seed else None
    return Average(mean, std, [], common)


def build_report(
    sweep_dir: str | os.PathLike[str],
    paper: PaperReference | None = None,
    paper_model: str | None = None,
    ddof: int = 0,
) -> Report:
    """Collect, match against the expected grid, and aggregate a sweep folder."""
    sweep_dir = Path(sweep_dir)
    paper = paper if paper is not None else load_paper()
    jobs, warnings = collect_jobs(sweep_dir)
    expected, grid_warnings = expected_grid(sweep_dir)
    warnings += grid_warnings
    found = {j.point for j in jobs}
    jobs += [Job(point=p, status=MISSING) for p in expected - found]

    expected_seeds: dict[tuple[str, str, str, Shots], set[int]] = defaultdict(set)
    for job in jobs:
        p = job.point
        expected_seeds[(p.model, p.task, p.mode, p.shots)].add(p.seed)

    models = []
    for model in sorted({j.point.model for j in jobs}):
        mine = [j for j in jobs if j.point.model == model]
        checkpoints = {j.checkpoint for j in mine if j.checkpoint}
        ref_model = paper_model or paper_model_for(model, next(iter(sorted(checkpoints)), None))
        tasks = sorted({j.point.task for j in mine}, key=_task_sort_key)
        cells: dict[tuple[str, str, Shots], Cell] = {}
        for job in mine:
            if job.status != COMPLETE or job.ap is None:
                continue
            p = job.point
            cell = cells.setdefault((p.task, p.mode, p.shots), Cell({}))
            cell.values[p.seed] = job.ap
        for (m, task, mode, shots), seeds in expected_seeds.items():
            if m == model and (task, mode, shots) in cells:
                cells[(task, mode, shots)].expected_seeds = len(seeds)
        odinw = any(dataset_key(t) for t in tasks)
        suite_keys = list(ODINW13_KEYS) if odinw else list(tasks)
        suite = "ODinW-13" if odinw else f"mean over {len(tasks)} tasks"
        modes = sorted({j.point.mode for j in mine}, key=_mode_rank)
        shots = sorted({j.point.shots for j in mine}, key=shots_sort_key)
        mode_shots: dict[str, list[Shots]] = {}
        for mode in modes:
            mode_shots[mode] = sorted(
                {j.point.shots for j in mine if j.point.mode == mode}, key=shots_sort_key
            )
        averages = {}
        for mode in modes:
            for s in shots:
                if any((t, mode, s) in cells for t in tasks):
                    averages[(mode, str(s))] = _average(cells, tasks, suite_keys, mode, s, odinw, ddof)
        models.append(
            ModelReport(model, ref_model, tasks, modes, shots, mode_shots, cells, averages, suite, suite_keys)
        )
    return Report(sweep_dir, jobs, models, paper, warnings, ddof)


# --------------------------------------------------------------------------------------------
# Rendering


def _fmt(value: float | None, std: float | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.1f}" if std is None else f"{value:.1f} ± {std:.1f}"


def _describe(point: GridPoint) -> str:
    return f"{point.model} {point.task} {point.mode} shots={point.shots} seed={point.seed}"


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in rows]
    return lines


def _label(task: str) -> str:
    key = dataset_key(task)
    return key if key and key != task else task


def _row_shots(mr: ModelReport, mode: str) -> list[Shots]:
    """Columns of a mode's table: zero-shot first (shared by all modes), then what ran."""
    cols = set(mr.mode_shots.get(mode, ()))
    if ZERO_MODE in mr.mode_shots:
        cols.add(0)
    return sorted(cols, key=shots_sort_key)


def _ours(mr: ModelReport, task: str, mode: str, shots: Shots, ddof: int) -> str:
    cell = mr.cells.get((task, ZERO_MODE if shots == 0 else mode, shots))
    if cell is None or not cell.n:
        return ""
    return _fmt(cell.mean, cell.std(ddof)) + (" *" if cell.partial else "")


def _paper_mode(mode: str, shots: Shots) -> str:
    return ZERO_MODE if shots == 0 else mode


def _avg_text(avg: Average | None) -> str:
    if avg is None:
        return ""
    if avg.mean is None:
        return f"— ({len(avg.missing)} missing)"
    return _fmt(avg.mean, avg.std)


def render_markdown(
    report: Report, plots: Mapping[str, list[Path]] | None = None, out_dir: Path | None = None
) -> str:
    """The Markdown report; `plots` maps a model to its PNG files, linked relative to `out_dir`."""
    lines = [f"# Sweep report: `{report.sweep_dir}`", ""]
    counts = {s: len(report.by_status(s)) for s in (COMPLETE, FAILED, RUNNING, NO_RESULTS, MISSING)}
    lines.append(
        f"Jobs: {counts[COMPLETE]} complete, {counts[FAILED]} failed, "
        f"{counts[RUNNING]} running or interrupted, {counts[NO_RESULTS]} started without results.json, "
        f"{counts[MISSING]} missing "
        f"(of {sum(counts.values())})."
    )
    lines += [
        "",
        "AP is COCO box mAP@[.5:.95] on the test split, in percent. Ours: mean ± std over seeds "
        f"({'population' if report.ddof == 0 else 'sample'} std; none for a single seed); "
        "`*` marks a cell with fewer seeds than the sweep asked for. "
        "The 0 column is the zero-shot evaluation, shared by all modes.",
    ]
    if report.paper.source is None:
        lines += ["", "Paper numbers: not found (set ADAPT_PAPER_DIR to benchmarks/odinw)."]
    for mr in report.models:
        lines += ["", f"## Model `{mr.model}`", ""]
        if mr.paper_model:
            lines.append(
                f"Paper reference: {mr.paper_model} (glip_spec.md 5.2-5.4b: averages ± std from Tables "
                "11-14, per-dataset figures from Tables 14-16)."
            )
            if mr.paper_model == "GLIP-T":
                lines.append(
                    "The paper's GLIP-T was pre-trained with Cap4M and is not released; the released "
                    "GLIP-T (CC3M+SBU) is compared against it as the nearest published row."
                )
        else:
            lines.append("Paper reference: none for this model.")
        lines += ["", f"### {mr.suite} average", ""]
        shot_cols = [s for s in mr.shots]
        header = ["mode"] + [str(s) for s in shot_cols]
        if mr.paper_model:
            header = ["mode"] + [c for s in shot_cols for c in (str(s), f"{s} paper")]
        rows = []
        missing_notes: dict[tuple[str, ...], list[str]] = defaultdict(list)
        for mode in mr.modes:
            row = [mode]
            for s in shot_cols:
                avg = mr.averages.get((mode, str(s)))
                if avg is not None and avg.missing:
                    missing_notes[tuple(avg.missing)].append(f"{mode} {s}")
                row.append(_avg_text(avg))
                if mr.paper_model:
                    head = report.paper.headline(mr.paper_model, mode, s)
                    row.append(_fmt(head[0], head[1]) if head else "")
            rows.append(row)
        lines += _md_table(header, rows)
        if missing_notes:
            lines += ["", f"No {mr.suite} average where a dataset has no result (mode shots: missing):", ""]
            lines += [f"- {', '.join(cells)}: {', '.join(names)}" for names, cells in missing_notes.items()]
        for mode in [m for m in mr.modes if m != ZERO_MODE] or [ZERO_MODE]:
            cols = _row_shots(mr, mode)
            lines += ["", f"### {MODE_TITLES.get(mode, mode)} (`mode={mode}`)", ""]
            header = ["dataset"] + (
                [c for s in cols for c in (str(s), f"{s} paper")]
                if mr.paper_model
                else [str(s) for s in cols]
            )
            rows = []
            for task in mr.tasks:
                row = [_label(task)]
                for s in cols:
                    row.append(_ours(mr, task, mode, s, report.ddof))
                    if mr.paper_model:
                        ref = report.paper.dataset(mr.paper_model, _paper_mode(mode, s), s, dataset_key(task))
                        row.append(_fmt(ref))
                rows.append(row)
            avg_row = [f"**{mr.suite} avg**"]
            for s in cols:
                avg_row.append(_avg_text(mr.averages.get((_paper_mode(mode, s), str(s)))))
                if mr.paper_model:
                    avg_row.append(_fmt(report.paper.table_average(mr.paper_model, _paper_mode(mode, s), s)))
            rows.append(avg_row)
            lines += _md_table(header, rows)
        if mr.paper_model:
            lines += [
                "",
                "The paper's avg row in these tables is the Avg column of Tables 14-16; it differs from the "
                "Tables 11-14 averages above by 0.1-0.4 AP in a few cells (glip_spec.md 5.2, 5.4b).",
            ]
        for png in (plots or {}).get(mr.model, []):
            rel = os.path.relpath(png, out_dir) if out_dir else str(png)
            lines += ["", f"![{png.stem}]({Path(rel).as_posix()})"]
    lines += _job_sections(report, out_dir)
    if report.warnings:
        lines += ["", "## Warnings", ""] + [f"- {_md_escape(w)}" for w in report.warnings]
    return "\n".join(lines) + "\n"


_MAX_LISTED = 200


def _rel(path: Path | None, base: Path) -> str:
    if path is None:
        return ""
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return str(path)


def _last_line(text: str | None) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def _job_sections(report: Report, out_dir: Path | None) -> list[str]:
    lines: list[str] = []
    sections = (
        (FAILED, "Failed jobs", "error (last line; full traceback in the folder's results.json)"),
        (RUNNING, "Running or interrupted jobs", "note"),
        (NO_RESULTS, "Started jobs without results.json", "note"),
        (MISSING, "Missing jobs (in the sweep's grid, never launched)", None),
    )
    for status, title, last in sections:
        jobs = report.by_status(status)
        if not jobs:
            continue
        lines += ["", f"## {title} ({len(jobs)})", ""]
        header = ["model", "task", "mode", "shots", "seed"] + ([last, "folder"] if last else [])
        rows = []
        for job in jobs[:_MAX_LISTED]:
            p = job.point
            row = [p.model, p.task, p.mode, str(p.shots), str(p.seed)]
            if last:
                detail = _last_line(job.error) if status == FAILED else (job.note or "")
                row += [detail, _rel(job.path, report.sweep_dir)]
            rows.append(row)
        lines += _md_table(header, rows)
        if len(jobs) > _MAX_LISTED:
            lines.append(f"\n... and {len(jobs) - _MAX_LISTED} more, see jobs.csv.")
    if not any(report.by_status(s) for s in (FAILED, RUNNING, NO_RESULTS, MISSING)):
        lines += ["", "All expected jobs are complete."]
    return lines


REPORT_COLUMNS = (
    "model",
    "task",
    "dataset",
    "mode",
    "shots",
    "n_seeds",
    "seeds",
    "mean",
    "std",
    "paper_model",
    "paper",
    "paper_std",
    "delta",
    "missing",
)
JOBS_COLUMNS = ("model", "task", "mode", "shots", "seed", "status", "ap", "folder", "error")


def report_rows(report: Report) -> list[dict[str, Any]]:
    """report.csv rows: one per model x task x mode x shots, then the suite averages."""
    rows = []
    for mr in report.models:
        for (task, mode, shots), cell in sorted(
            mr.cells.items(),
            key=lambda kv: (_task_sort_key(kv[0][0]), _mode_rank(kv[0][1]), shots_sort_key(kv[0][2])),
        ):
            ref = report.paper.dataset(mr.paper_model, mode, shots, dataset_key(task))
            std = cell.std(report.ddof)
            rows.append(
                {
                    "model": mr.model,
                    "task": task,
                    "dataset": dataset_key(task) or "",
                    "mode": mode,
                    "shots": shots,
                    "n_seeds": cell.n,
                    "seeds": " ".join(str(s) for s in sorted(cell.values)),
                    "mean": round(cell.mean, 4),
                    "std": "" if std is None else round(std, 4),
                    "paper_model": mr.paper_model or "",
                    "paper": "" if ref is None else ref,
                    "paper_std": "",
                    "delta": "" if ref is None else round(cell.mean - ref, 4),
                    "missing": "",
                }
            )
        for mode in mr.modes:
            for s in mr.shots:
                avg = mr.averages.get((mode, str(s)))
                if avg is None:
                    continue
                head = report.paper.headline(mr.paper_model, mode, s)
                rows.append(
                    {
                        "model": mr.model,
                        "task": f"{mr.suite} average",
                        "dataset": "avg",
                        "mode": mode,
                        "shots": s,
                        "n_seeds": len(avg.seeds),
                        "seeds": " ".join(str(x) for x in avg.seeds),
                        "mean": "" if avg.mean is None else round(avg.mean, 4),
                        "std": "" if avg.std is None else round(avg.std, 4),
                        "paper_model": mr.paper_model or "",
                        "paper": head[0] if head else "",
                        "paper_std": "" if not head or head[1] is None else head[1],
                        "delta": round(avg.mean - head[0], 4) if head and avg.mean is not None else "",
                        "missing": " ".join(avg.missing),
                    }
                )
    return rows


def job_rows(report: Report) -> list[dict[str, Any]]:
    """jobs.csv rows: every job, expected or found, with its status."""
    order = {COMPLETE: 4, FAILED: 0, RUNNING: 1, NO_RESULTS: 2, MISSING: 3}
    rows = []
    for job in sorted(report.jobs, key=lambda j: (order[j.status], _job_sort_key(j.point))):
        p = job.point
        rows.append(
            {
                "model": p.model,
                "task": p.task,
                "mode": p.mode,
                "shots": p.shots,
                "seed": p.seed,
                "status": job.status,
                "ap": "" if job.ap is None else job.ap,
                "folder": _rel(job.path, report.sweep_dir),
                "error": _last_line(job.error) if job.status == FAILED else (job.note or ""),
            }
        )
    return rows


def _csv_text(columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# Plots


def _plot_series(
    mr: ModelReport, mode: str, xs: Sequence[Shots], value: Any
) -> tuple[list[int], list[float], list[float]]:
    pos, ys, errs = [], [], []
    for i, s in enumerate(xs):
        got = value(_paper_mode(mode, s), s)
        if got is None or got[0] is None:
            continue
        pos.append(i)
        ys.append(got[0])
        errs.append(got[1] or 0.0)
    return pos, ys, errs


def plot_report(mr: ModelReport, paper: PaperReference, out_dir: Path, ddof: int = 0) -> list[Path]:
    """AP against shots per mode: the suite average, and one panel per dataset.

    Shots sit at evenly spaced positions (0, 1, 3, 5, 10, all) as in the paper's figures, each mode
    starts from the shared zero-shot point, and the paper's curve for the same mode is dashed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    xs = mr.shots
    modes = [m for m in mr.modes if m != ZERO_MODE] or [ZERO_MODE]
    colors = {m: f"C{i}" for i, m in enumerate(modes)}
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in mr.model)
    written = []

    def draw(ax: Any, ours: Any, ref: Any, title: str) -> None:
        for mode in modes:
            pos, ys, errs = _plot_series(mr, mode, xs, ours)
            if pos:
                ax.errorbar(pos, ys, yerr=errs, color=colors[mode], marker="o", ms=4, capsize=2, label=mode)
            if mr.paper_model:
                pos, ys, _ = _plot_series(mr, mode, xs, ref)
                if pos:
                    ax.plot(
                        pos,
                        ys,
                        color=colors[mode],
                        ls="--",
                        marker="x",
                        ms=4,
                        alpha=0.8,
                        label=f"{mode} (paper)",
                    )
        ax.set_xticks(range(len(xs)), [str(s) for s in xs])
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)

    def avg_value(mode: str, s: Shots) -> tuple[float | None, float | None] | None:
        avg = mr.averages.get((mode, str(s)))
        return (avg.mean, avg.std) if avg else None

    def avg_ref(mode: str, s: Shots) -> tuple[float, float | None] | None:
        return paper.headline(mr.paper_model, mode, s)

    fig, ax = plt.subplots(figsize=(6, 4.2))
    draw(ax, avg_value, avg_ref, f"{mr.model}: {mr.suite} average AP")
    ax.set_xlabel("shots per category")
    ax.set_ylabel("AP")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out_dir / f"{safe}_average.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)

    ncols = min(4, len(mr.tasks))
    nrows = math.ceil(len(mr.tasks) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 2.6 * nrows), squeeze=False)
    for ax, task in zip(axes.flat, mr.tasks, strict=False):

        def ours(mode: str, s: Shots, task: str = task) -> tuple[float, float | None] | None:
            cell = mr.cells.get((task, mode, s))
            return (cell.mean, cell.std(ddof)) if cell and cell.n else None

        def ref(mode: str, s: Shots, task: str = task) -> tuple[float, None] | None:
            value = paper.dataset(mr.paper_model, mode, s, dataset_key(task))
            return None if value is None else (value, None)

        draw(ax, ours, ref, _label(task))
    for ax in list(axes.flat)[len(mr.tasks) :]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=7)
    fig.suptitle(f"{mr.model}: AP against shots per dataset", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    path = out_dir / f"{safe}_per_dataset.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)
    return written


# --------------------------------------------------------------------------------------------
# Entry point


def write_report(report: Report, out_dir: str | os.PathLike[str], plots: bool = True) -> dict[str, Path]:
    """Write report.md, report.csv, jobs.csv and the plots; returns their paths by name."""
    out = Path(out_dir)
    written: dict[str, Path] = {}
    pngs: dict[str, list[Path]] = {}
    if plots:
        for mr in report.models:
            pngs[mr.model] = plot_report(mr, report.paper, out / "plots", report.ddof)
            for png in pngs[mr.model]:
                written[png.name] = png
    write_text(out / "report.csv", _csv_text(REPORT_COLUMNS, report_rows(report)))
    write_text(out / "jobs.csv", _csv_text(JOBS_COLUMNS, job_rows(report)))
    write_text(out / "report.md", render_markdown(report, pngs, out))
    written.update(
        {"report.csv": out / "report.csv", "jobs.csv": out / "jobs.csv", "report.md": out / "report.md"}
    )
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m adapt.report",
        description="Tables and plots of a sweep folder, next to the GLIP paper's ODinW numbers.",
    )
    parser.add_argument("sweep_dir", type=Path, help="folder of a multirun (e.g. multirun/odinw13/glip_t)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: SWEEP_DIR/report)")
    parser.add_argument("--paper-model", choices=PAPER_MODELS, default=None, help="paper row to compare with")
    parser.add_argument(
        "--paper-dir", type=Path, default=None, help="folder of paper_*.csv (default: shipped)"
    )
    parser.add_argument("--no-paper", action="store_true", help="leave the paper's numbers out")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument(
        "--ddof", type=int, choices=(0, 1), default=0, help="std over seeds: 0 population, 1 sample"
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 when a job failed, is missing or unfinished"
    )
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        parser.error(f"{args.sweep_dir} is not a folder")
    paper = PaperReference() if args.no_paper else load_paper(args.paper_dir)
    report = build_report(args.sweep_dir, paper=paper, paper_model=args.paper_model, ddof=args.ddof)
    written = write_report(report, args.out or args.sweep_dir / "report", plots=not args.no_plots)
    counts = {s: len(report.by_status(s)) for s in (COMPLETE, FAILED, RUNNING, NO_RESULTS, MISSING)}
    print(", ".join(f"{n} {s}" for s, n in counts.items()))
    for mr in report.models:
        for mode in mr.modes:
            cells = [
                f"{s}: {_avg_text(mr.averages.get((mode, str(s))))}"
                for s in mr.shots
                if (mode, str(s)) in mr.averages
            ]
            if cells:
                print(f"{mr.model} {mode} ({mr.suite}): " + "; ".join(cells))
    print(f"wrote {written['report.md']}")
    incomplete = counts[FAILED] + counts[RUNNING] + counts[NO_RESULTS] + counts[MISSING]
    return 1 if args.strict and incomplete else 0


if __name__ == "__main__":
    sys.exit(main())
