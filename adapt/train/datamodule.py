"""Task splits as Lightning dataloaders, with the few-shot recipe's copies and the GLIP batch format.

One Lightning epoch is one official evaluation period: a pass over the training set repeated
``copies`` times (``GENERAL_COPY``), i.e. ``copies * N // batch_size`` optimiser steps (glip_spec.md
4.7). Randomness is a pure function of (seed, epoch, index): the sampler shuffles with a generator
seeded by (seed, epoch), and each sample's augmentation (multi-scale resize, flip) is drawn from its
own seed. A run resumed at an epoch boundary therefore sees exactly the batches an uninterrupted run
sees, whatever the number of workers.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.seed import pl_worker_init_function
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from adapt.data import Task, transforms_from_config
from adapt.data.coco import CocoDetection
from adapt.model.config import InputConfig
from adapt.model.preprocess import batch_images
from adapt.prompt import EncodedPrompt

Batch = dict[str, Any]


def steps_per_period(images: int, copies: int, batch_size: int) -> int:
    """Optimiser steps in one evaluation period: copies * N // batch (at least one).

    A function of the counts alone, so that the sweep cost estimate (benchmarks/odinw) uses the
    very formula the training runs by.
    """
    return max(images * copies // batch_size, 1)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A distinct, reproducible seed per (run seed, epoch, sample)."""
    return (seed * 1_000_003 + epoch * 10_007 + index) % (2**63 - 1)


class CopiedDataset(Dataset):
    """The training set repeated ``copies`` times (official ``GENERAL_COPY``), indexed by (epoch, i).

    Index ``i`` of the copy maps to image ``i % N``; the transforms run under a private RNG seeded
    by (seed, epoch, i), so augmentation does not depend on what ran before (resume, workers).
    """

    def __init__(self, dataset: CocoDetection, copies: int, seed: int) -> None:
        if copies < 1:
            raise ValueError(f"shots.copies must be >= 1, got {copies}")
        self.dataset = dataset
        self.copies = copies
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset) * self.copies

    def __getitem__(self, key: tuple[int, int] | int) -> tuple[Tensor, dict[str, Any]]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, epoch, index))
            return self.dataset[index % len(self.dataset)]


class EpochSampler(Sampler[tuple[int, int]]):
    """Shuffles with a generator seeded by (seed, epoch) and yields (epoch, index) pairs.

    Lightning calls ``set_epoch`` at every epoch start (as for DistributedSampler), so the order is
    reproducible per epoch, like the official sampler seeded by the iteration count.
    """

    def __init__(self, size: int, seed: int, shuffle: bool = True) -> None:
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, -1))
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        return iter([(self.epoch, i) for i in order])


class DistributedEpochSampler(DistributedSampler):
    """Rank ``rank``'s share of the single-process order: the global batches are the same images.

    The (seed, epoch) permutation of :class:`EpochSampler` is cut to whole global batches (official
    ``copies * N // IMS_PER_BATCH`` iterations, the incomplete last batch dropped) and dealt round
    robin, so with a per-rank batch of ``global_batch / world`` the k-th step of all ranks together
    sees exactly the images of the single-process k-th batch. A set smaller than one global batch is
    wrapped around to give every rank the same number of images (no rank may run a step less).
    A ``DistributedSampler`` subclass, so Lightning keeps it instead of wrapping the order again.
    """

    def __init__(self, size: int, seed: int, global_batch: int, num_replicas: int, rank: int) -> None:
        super().__init__(range(size), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)  # type: ignore[arg-type]
        self.order = EpochSampler(size, seed)
        self.size = size
        if size >= global_batch:
            self.total = size // global_batch * global_batch
        else:
            self.total = -(-size // num_replicas) * num_replicas
        self.num_samples = self.total // num_replicas

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.order.set_epoch(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = list(self.order)
        order = (order * (-(-self.total // len(order))))[: self.total]
        return iter(order[self.rank :: self.num_replicas])


class DistributedEvalSampler(DistributedSampler):
    """Images ``rank, rank + world, ...`` with no padding, so no image is evaluated twice.

    (Torch's sampler repeats images to even out the ranks, which would count them twice in AP.)
    :func:`interleave` puts the gathered per-rank predictions back in dataset order.
    """

    def __init__(self, size: int, num_replicas: int, rank: int) -> None:
        super().__init__(range(size), num_replicas=num_replicas, rank=rank, shuffle=False)  # type: ignore[arg-type]
        self.size = size
        self.num_samples = len(range(rank, size, num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.num_replicas))


def interleave(per_rank: Sequence[Sequence[Any]]) -> list[Any]:
    """Inverse of :class:`DistributedEvalSampler`'s split: item k of rank r is dataset item r + k*world."""
    world = len(per_rank)
    out: list[Any] = [None] * sum(len(items) for items in per_rank)
    for rank, items in enumerate(per_rank):
        out[rank::world] = items
    return out


class GLIPCollate:
    """Samples -> the model's batch: normalised padded images, sizes and loss targets.

    Targets carry the binary positive map (official ``BatchCollator``) of each box against the
    task's fixed prompt, so the model never needs the label -> token map in training.
    """

    def __init__(self, prompt: EncodedPrompt, input_cfg: InputConfig) -> None:
        self.prompt = prompt
        self.input_cfg = input_cfg

    def __call__(self, samples: Sequence[tuple[Tensor, dict[str, Any]]]) -> Batch:
        images, targets = zip(*samples, strict=True)
        batch, sizes = batch_images(list(images), self.input_cfg)
        out_targets = []
        for t in targets:
            t = dict(t)
            t["positive_map"] = self.prompt.positive_map(t["labels"])
            out_targets.append(t)
        return {"images": batch, "image_sizes": sizes, "targets": out_targets}


def init_worker(worker_id: int) -> None:
    """DataLoader workers ignore SIGTERM: the main process stops the run and shuts them down.

    A SIGTERM sent to the whole process group (SLURM, `timeout`, a shell killing the job) reaches
    the workers too; torch's worker handler then dies by the signal, and the main process reports
    "DataLoader worker is killed by signal" in a traceback instead of stopping cleanly. Lightning's
    worker seeding (`seed_everything(workers=True)`) is kept, since setting this function replaces it.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if int(os.environ.get("PL_SEED_WORKERS", 0)):
        pl_worker_init_function(worker_id)


class TaskDataModule(L.LightningDataModule):
    """Train (few-shot, copied), val and test splits of a task for one run.

    ``input_cfg`` is the resize block (``min_size_train``, ``max_size_train``, ``min_size_test``,
    ``max_size_test``), normally the model's ``arch.input``; the model's own normalisation and
    padding are applied in the collate function.
    """

    def __init__(
        self,
        task: Task,
        prompt: EncodedPrompt,
        input_cfg: InputConfig,
        shots: int | str,
        copies: int,
        seed: int,
        batch_size: int,
        eval_batch_size: int,
        num_workers: int = 0,
        resize: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.task = task
        self.prompt = prompt
        self.input_cfg = input_cfg
        self.shots = shots
        self.copies = copies
        self.seed = seed
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.resize = dict(resize) if resize is not None else _resize_keys(input_cfg)
        self.collate = GLIPCollate(prompt, input_cfg)
        self._datasets: dict[str, CocoDetection] = {}

    def split(self, split: str) -> CocoDetection:
        """The split's dataset (opened once): few-shot for train and val, whole for test."""
        if split not in self._datasets:
            shots = self.shots if split != "test" else "all"
            if split == "val" and self.shots == 0:
                shots = "all"
            self._datasets[split] = self.task.dataset(
                split,
                shots=shots,
                seed=self.seed,
                transforms=self.transforms(split),
            )
        return self._datasets[split]

    def transforms(self, split: str) -> Any:
        """A split's transforms: the model's resize rule (training: multi-scale and flip)."""
        return transforms_from_config(self.resize, split == "train")

    def steps_per_epoch(self) -> int:
        """Optimiser steps in one evaluation period (see `steps_per_period`)."""
        return steps_per_period(len(self.split("train")), self.copies, self.batch_size)

    def world(self) -> tuple[int, int]:
        """(world size, global rank) of the attached trainer; (1, 0) without one."""
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def starting_epoch(self) -> int:
        """The epoch the attached trainer's next training pass is (0 without a trainer or its loop).

        Lightning creates the training iterator before it calls the sampler's ``set_epoch``, and a
        DataLoader with workers draws its first indices at that moment: a run resumed at epoch 3
        replayed epoch 0's order and augmentation in its first period (without workers the sampler
        is read lazily, after ``set_epoch``). Starting the sampler at the epoch Lightning will set
        makes the two agree.
        """
        fit_loop = getattr(self.trainer, "fit_loop", None)  # a bare rank (tests, DDP checks) has none
        if fit_loop is None:
            return 0
        progress: Any = fit_loop.epoch_progress.current  # a _ReadyCompletedTracker subclass
        return int(progress.processed)

    def train_dataloader(self) -> DataLoader:
        data = CopiedDataset(self.split("train"), self.copies, self.seed)
        world, rank = self.world()
        if world > 1:
            # The batch size is global (official IMS_PER_BATCH: 4 GPUs x 1 image), split over ranks.
            if self.batch_size % world:
                raise ValueError(
                    f"data.batch_size={self.batch_size} is the global batch and must be divisible "
                    f"by the {world} devices"
                )
            sampler = DistributedEpochSampler(len(data), self.seed, self.batch_size, world, rank)
            sampler.set_epoch(self.starting_epoch())
            return DataLoader(
                data,
                batch_size=self.batch_size // world,
                sampler=sampler,
                num_workers=self.num_workers,
                collate_fn=self.collate,
                persistent_workers=False,
            )
        # Official iterations per period = copies * N // batch: drop the incomplete last batch.
        drop_last = len(data) >= self.batch_size
        order = EpochSampler(len(data), self.seed)
        order.set_epoch(self.starting_epoch())
        return DataLoader(
            data,
            batch_size=self.batch_size,
            sampler=order,
            drop_last=drop_last,
            num_workers=self.num_workers,
            collate_fn=self.collate,
            persistent_workers=False,
            worker_init_fn=init_worker,
        )

    def _eval_loader(self, split: str) -> DataLoader:
        world, rank = self.world()
        if world > 1:
            data = self.split(split)
            return DataLoader(
                data,
                batch_size=max(self.eval_batch_size // world, 1),  # global, like the train batch
                sampler=DistributedEvalSampler(len(data), world, rank),
                num_workers=self.num_workers,
                collate_fn=self.collate,
            )
        return DataLoader(
            self.split(split),
            batch_size=self.eval_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=self.collate,
            worker_init_fn=init_worker,
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")


def _resize_keys(input_cfg: InputConfig) -> dict[str, Any]:
    return {
        "min_size_train": list(input_cfg.min_size_train),
        "max_size_train": input_cfg.max_size_train,
        "min_size_test": input_cfg.min_size_test,
        "max_size_test": input_cfg.max_size_test,
    }
