"""A detection task: where its files are, its label space, its prompts, and its splits.

`build_task(cfg.task)` turns one `conf/task/**.yaml` into a `Task`; `task.dataset(split, shots,
seed)` opens a split exactly as the paper's protocol does:

* `shots=K` on the training split uses the official prepared file
  (`fewshot_train_shot{K}_seed{S}.json`) when it is present, otherwise `adapt.fewshot`'s sampler
  with the same seed;
* `shots=K` on the val split uses the prepared K-shot val file (the paper's prepared protocol
  validates on a K-shot val split, spec 4.5b) when present, otherwise a K-shot sample of the val
  split drawn with the same rule and seed; so a K-shot run never sees more labelled images than
  its protocol allows, prepared files or not;
* `shots="all"` (and `shots=0` for val) uses the whole split; `shots=0` has no training set;
* the test split is always whole.

Labels are contiguous: label i + 1 is the json category `category_ids[i]` (ascending json ids,
spec 6.3), and every split of a task shares them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

import adapt
import adapt.fewshot as fewshot  # module import: adapt.fewshot itself imports adapt.data
from adapt.data.coco import CocoDetection, load_coco_json
from adapt.data.errors import DataError
from adapt.data.grounding_task import GroundingTask, build_grounding_task, is_grounding_config
from adapt.data.transforms import build_transforms
from adapt.grid import normalize_shots
from adapt.prompt import CaptionPrompt

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
PROMPT_SETS = ("manual", "raw")
Shots = int | str


PACKAGE_PREFIX = "package:"


def data_path(value: str | Path) -> Path:
    """A configured folder as a Path: `~` expanded, `package:<path>` inside the installed adapt.

    The prefix lets data shipped in the wheel (task=demo) be found wherever adapt is installed,
    without an OmegaConf resolver that every config reader would have to register first.
    """
    text = str(value)
    if text.startswith(PACKAGE_PREFIX):
        return Path(adapt.__file__).resolve().parent / text[len(PACKAGE_PREFIX) :].lstrip("/")
    return Path(text).expanduser()


def resolve_config(cfg: Mapping[str, Any] | DictConfig) -> dict[str, Any]:
    """Plain dict of a task config with interpolations resolved; a missing `???` key is named."""
    if not isinstance(cfg, DictConfig):
        return dict(cfg)
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]
    except MissingMandatoryValue as exc:
        key = getattr(exc, "full_key", None) or "a task key"
        raise DataError(f"{key} must be set: add {key}=... to the command line") from exc


@dataclass
class SplitFiles:
    """Where one split lives: its annotation file and its image folder."""

    json: Path | None
    image_dir: Path | None


@dataclass
class Task:
    """Everything about a task that does not depend on the model; see the module docstring."""

    id: str
    name: str
    data_root: Path
    raw_names: list[str]
    class_names: list[str]
    category_ids: list[int]
    caption_prompts: list[CaptionPrompt | None] | None
    splits: dict[str, SplitFiles]
    fewshot_files: dict[str, str | None] = field(default_factory=dict)
    drop_background: bool = False  # only where the task config says so (Roboflow exports)
    check_names: bool = True
    max_dets: int = 100
    _cache: dict[Path, dict[str, Any]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def prepared_file(self, split: str, shots: Shots, seed: int | None) -> Path | None:
        """The official prepared K-shot file of `split` for (shots, seed), if it exists on disk."""
        pattern = self.fewshot_files.get(split)
        if pattern is None or not isinstance(shots, int) or shots <= 0 or seed is None:
            return None
        path = self.data_root / pattern.format(shots=shots, seed=seed)
        return path if path.is_file() else None

    def split_source(self, split: str, shots: Shots = "all", seed: int | None = None) -> str:
        """One line saying which file (and which sampling) a split comes from, for logs and results."""
        split = self._check_split(split)
        shots = normalize_shots(shots)
        json_file, _ = self._files(split)
        if split == "test" or shots == "all" or (shots == 0 and split == "val"):
            return str(json_file)
        prepared = self.prepared_file(split, shots, seed)
        if prepared is not None:
            return f"{prepared} (official prepared {shots}-shot split)"
        return f"{json_file} sampled to {shots} shots with seed {seed} (adapt.fewshot)"

    def dataset(
        self,
        split: str,
        shots: Shots = "all",
        seed: int | None = None,
        transforms: Any = "default",
        check_files: bool = True,
    ) -> CocoDetection:
        """Open a split as the paper's protocol does (module docstring); validates files and labels.

        `transforms="default"` is the official pipeline for the split (multi-scale + flip for
        train, 800/1333 resize otherwise); pass None for untransformed images or your own callable.
        """
        split = self._check_split(split)
        shots = normalize_shots(shots)
        if split == "train" and shots == 0:
            raise ValueError("shots=0 is zero-shot: there is no training set; evaluate val/test only")
        json_file, image_dir = self._files(split)
        ann_file, label = json_file, split
        if split != "test" and isinstance(shots, int) and shots > 0:
            prepared = self.prepared_file(split, shots, seed)
            if prepared is not None:
                ann_file, data = prepared, self._load(prepared, split)
            else:
                data = fewshot.sample_fewshot(
                    self._load(json_file, split), shots, seed, source=f"{json_file} ({split})"
                )
            label = f"{split}, {shots}-shot, seed {seed}"
        else:
            data = self._load(json_file, split)
        train = split == "train"
        if isinstance(transforms, str) and transforms == "default":
            transforms = build_transforms(train)
        log.info("%s: %s split from %s", self.id, split, self.split_source(split, shots, seed))
        return CocoDetection(
            data,
            ann_file=ann_file,
            image_dir=image_dir,
            category_ids=self.category_ids,
            train=train,
            transforms=transforms,
            split=label,
            check_files=check_files,
        )

    def _check_split(self, split: str) -> str:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return split

    def _files(self, split: str) -> tuple[Path, Path]:
        """(annotation file, image folder) of a configured split (a configured json has both)."""
        files = self.splits[split]
        if files.json is None or files.image_dir is None:
            raise DataError(f"task {self.id}: no {split} annotation file configured (task.{split}_json)")
        return files.json, files.image_dir

    def _load(self, path: Path, split: str) -> dict[str, Any]:
        """Load (once) and check that the file's categories are the task's label space."""
        if path not in self._cache:
            data = load_coco_json(path, drop_background=self.drop_background, split=split)
            cats = {c["id"]: c["name"] for c in data["categories"]}
            if sorted(cats) != sorted(self.category_ids):
                raise DataError(
                    f"{path}: category ids {sorted(cats)} differ from the task's {self.category_ids} "
                    f"({self.raw_names})"
                )
            names = [cats[c] for c in self.category_ids]
            if self.check_names and names != self.raw_names:
                raise DataError(
                    f"{path}: category names {names} differ from the task config's {self.raw_names}"
                )
            self._cache[path] = data
        return self._cache[path]


def _split_files(cfg: Mapping[str, Any], root: Path) -> dict[str, SplitFiles]:
    """Each split's json and image folder; images default to `image_dir`, then the json's folder.

    A dataset without a test split evaluates on val (PascalVOC in ODinW), and one without val
    validates on test, so every task has all three splits (or says which one is not configured).
    """
    out = {}
    for s in SPLITS:
        name = cfg.get(f"{s}_json")
        image_dir = cfg.get(f"{s}_image_dir") or cfg.get("image_dir")
        if name is None:
            out[s] = SplitFiles(None, None)
            continue
        json_path = root / Path(name).expanduser()
        out[s] = SplitFiles(json_path, root / Path(image_dir).expanduser() if image_dir else json_path.parent)
    if out["test"].json is None:
        out["test"] = out["val"]
    if out["val"].json is None:
        out["val"] = out["test"]
    return out


def _categories_from_json(
    splits: Mapping[str, SplitFiles], drop_background: bool
) -> tuple[list[int], list[str]]:
    for files in splits.values():
        if files.json is not None and files.json.is_file():
            # Only the categories are read here; the split's own load fixes and reports its boxes.
            data = load_coco_json(files.json, drop_background=drop_background, fix=False)
            cats = sorted(data["categories"], key=lambda c: c["id"])
            return [c["id"] for c in cats], [c["name"] for c in cats]
    wanted = ", ".join(str(f.json) for f in splits.values() if f.json is not None) or "none configured"
    raise DataError(f"no annotation file found to read the categories from ({wanted})")


def _prompts(
    cfg: Mapping[str, Any], raw_names: Sequence[str], task_id: str
) -> tuple[list[str], list[CaptionPrompt | None] | None]:
    """Class names after renames and per-class caption prompts, for the chosen prompt set."""
    which = cfg.get("prompts", "manual")
    if which not in PROMPT_SETS:
        raise ValueError(f"task {task_id}: prompts must be one of {PROMPT_SETS}, got {which!r}")
    renames = dict(cfg.get("renames") or {})
    captions = dict(cfg.get("caption_prompts") or {})
    unknown = sorted((set(renames) | set(captions)) - set(raw_names))
    if unknown:
        raise ValueError(
            f"task {task_id}: renames/caption_prompts name unknown categories {unknown}; "
            f"known: {list(raw_names)}"
        )
    if which == "raw":
        return list(raw_names), None
    names = [str(renames.get(n, n)) for n in raw_names]
    if not captions:
        return names, None
    prompts: list[CaptionPrompt | None] = []
    for raw in raw_names:
        entry = captions.get(raw)
        if entry is None:
            prompts.append(None)
            continue
        extra = set(entry) - {"prefix", "name", "suffix"}
        if extra:
            raise ValueError(f"task {task_id}: caption prompt of {raw!r} has unknown keys {sorted(extra)}")
        prompts.append(
            CaptionPrompt(
                prefix=entry.get("prefix") or "", name=entry.get("name"), suffix=entry.get("suffix") or ""
            )
        )
    return names, prompts


def _check_distinct(
    task_id: str,
    ids: Sequence[int],
    raw_names: Sequence[str],
    names: Sequence[str],
    splits: Mapping[str, SplitFiles] | None,
) -> None:
    """Refuse two categories under one name: their boxes would share one caption phrase (the model
    cannot tell them apart) and one per-category AP key (one would overwrite the other)."""
    for which, listed in (("named", raw_names), ("renamed", names)):
        seen: dict[str, int] = {}
        for cat_id, name in zip(ids, listed, strict=True):
            if name not in seen:
                seen[name] = cat_id
                continue
            where = (
                next(str(f.json) for f in splits.values() if f.json is not None and f.json.is_file())
                if splits is not None and which == "named"
                else "the task config"
            )
            fix = (
                "task.renames maps two names to it: rename them apart"
                if which == "renamed"
                else "give them distinct names there (or merge them into one category)"
            )
            raise DataError(
                f"task {task_id}: categories {seen[name]} and {cat_id} are both {which} {name!r} in {where}, "
                f"so their prompt phrase and their AP would merge: {fix}"
            )


def build_task(cfg: Mapping[str, Any] | DictConfig) -> Task | GroundingTask:
    """Build a Task from a `conf/task/**.yaml` node (e.g. `cfg.task`); cheap unless it must read categories.

    Task configs that list `categories` (ODinW, demo) are built without touching the disk, so a
    run can report missing data (adapt.download.require_dataset) before anything else; a config
    with `categories: null` (task=coco) reads them from the first annotation file present.
    ``type: grounding`` configs are phrase-grounding tasks (`adapt.data.grounding_task`).
    """
    c = resolve_config(cfg)
    task_id = str(c.get("id") or c.get("name") or "task")
    if c.get("data_root") in (None, ""):
        raise DataError(f"task {task_id}: task.data_root must be set to the dataset folder")
    root = data_path(c["data_root"])
    if is_grounding_config(c):
        return build_grounding_task(c, root)
    splits = _split_files(c, root)
    drop_background = bool(c.get("drop_background", False))
    if c.get("categories"):
        raw_names = [str(n) for n in c["categories"]]
        ids = [int(i) for i in c.get("category_ids") or range(1, len(raw_names) + 1)]
        if len(ids) != len(raw_names) or sorted(ids) != ids:
            raise ValueError(f"task {task_id}: category_ids must be ascending and match categories")
        check_names = True
    else:
        ids, raw_names = _categories_from_json(splits, drop_background)
        check_names = False
    class_names, caption_prompts = _prompts(c, raw_names, task_id)
    _check_distinct(task_id, ids, raw_names, class_names, splits if not c.get("categories") else None)
    return Task(
        id=task_id,
        name=str(c.get("name") or task_id),
        data_root=root,
        raw_names=raw_names,
        class_names=class_names,
        category_ids=ids,
        caption_prompts=caption_prompts,
        splits=splits,
        fewshot_files={"train": c.get("fewshot_train_json"), "val": c.get("fewshot_val_json")},
        drop_background=drop_background,
        check_names=check_names,
        max_dets=int(c.get("max_dets") or 100),
    )
