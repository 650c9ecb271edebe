"""TensorDataModule: three splits of uint8 images served one batch at a time, normalised (and, in
training, augmented) per batch on the device the batch trains on.

Held in memory, a batch is one indexing operation (on the GPU when the data lives there); read
from a cache file (`data.in_memory=false`), batches stream through `data.num_workers` loader
processes, pinned for a GPU."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    RandomSampler,
    SequentialSampler,
)

from cnnexp.data.images import Images, Normalise, row_index
from cnnexp.data.splits import Split, Splits
from cnnexp.errors import ConfigError

log = logging.getLogger(__name__)
Batch = tuple[torch.Tensor, torch.Tensor]  # uint8 images, labels: what a loader yields
GPU_SHARE = 0.5  # data.device=auto: the data may take this share of the GPU's free memory


class Batches(Dataset):
    """A split served a whole batch at a time (DataLoader calls __getitems__ with the batch's
    positions): one indexing operation or one read of the rows, no per-image collation."""

    def __init__(self, split: Split) -> None:
        self.x, self.y = split

    def __len__(self) -> int:
        return len(self.y)

    def __getitems__(self, positions: list[int]) -> Batch:
        rows = np.asarray(positions)
        return self.x[rows], self.y[row_index(rows, self.y.device)]


def as_is(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return batch


class EpochBatchSampler(BatchSampler):
    """A BatchSampler that passes Lightning's set_epoch on (a DistributedSampler reshuffles)."""

    def set_epoch(self, epoch: int) -> None:
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(epoch)


class TensorDataModule(L.LightningDataModule):
    """Train/val/test uint8 images (`Images`) and labels; each batch becomes the net's input in
    `on_after_batch_transfer`, on its device: `augment` (uint8 batch → uint8 batch, training
    batches only), then `Normalise`. `inputs(x)` does the same for images taken by hand.
    `device` (data.device): auto puts in-memory data on the GPU the run trains on when it fits,
    gpu insists, cpu never does."""

    def __init__(
        self,
        splits: Splits,
        batch_size: int,
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
        num_workers: int = 0,
        device: str = "auto",
    ) -> None:
        super().__init__()
        self.name = splits.name
        self.train, self.val, self.test = splits.train, splits.val, splits.test
        self.class_names = list(splits.class_names)
        self.num_classes = len(self.class_names)
        self.input_shape: tuple[int, int, int] = tuple(splits.train[0].shape[1:])
        self.mean, self.std = splits.mean, splits.std
        self.normalise = Normalise(self.mean, self.std)
        self.batch_size = batch_size
        self.augment = augment
        self.num_workers, self.device = num_workers, device
        self.in_memory = all(x.in_memory for x, _ in (self.train, self.val, self.test))

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images of these splits as the net's input (normalised floats, x's device)."""
        return self.normalise(x)

    def trains_on(self) -> torch.device | None:
        """The device the attached Trainer trains on (None without one)."""
        return self.trainer.strategy.root_device if self.trainer is not None else None

    def setup(self, stage: str) -> None:
        where = self.trains_on()
        if where is None or where.type != "cuda" or self.device == "cpu":
            if self.device == "gpu":
                raise ConfigError(
                    f"data.device: gpu, but this run trains on {where} (allowed: auto, cpu)"
                )
            return
        held = {id(x.base): x.base for x, _ in (self.train, self.val, self.test) if x.in_memory}
        size = sum(base.nbytes for base in held.values())
        free = torch.cuda.mem_get_info(where)[0]
        if not self.in_memory or (self.device == "auto" and size > GPU_SHARE * free):
            if self.device == "gpu":
                raise ConfigError(
                    f"data.device: gpu, but the data ({size / 2**20:.0f} MB, in memory: "
                    f"{self.in_memory}) cannot live on {where} ({free / 2**20:.0f} MB free) "
                    "(allowed: auto, cpu)"
                )
            return
        moved = {key: base.to(where) for key, base in held.items()}
        self.train, self.val, self.test = (
            (Images(moved[id(x.base)], x.positions), y.to(where))
            for x, y in (self.train, self.val, self.test)
        )
        log.info("data %s: %.0f MB of uint8 images on %s", self.name, size / 2**20, where)

    def train_dataloader(self) -> DataLoader:
        overfitting = self.trainer is not None and self.trainer.overfit_batches > 0
        return self._batches(self.train, shuffle=not overfitting)  # same batches

    def val_dataloader(self) -> DataLoader:
        return self._batches(self.val)

    def test_dataloader(self) -> DataLoader:
        return self._batches(self.test)

    def _batches(self, split: Split, shuffle: bool = False) -> DataLoader:
        """Each step indexes the images once with a list of positions (a batch sampler, so
        Lightning's overfit_batches keeps our loaders); streamed data is read by
        `num_workers` processes, pinned when a GPU trains.
        Under DDP each process gets its own shard (DistributedSampler; Lightning's own sampler
        swap is off: trainer.use_distributed_sampler=false, it would unbatch these loaders)."""
        data = Batches(split)
        seed = torch.initial_seed()  # set by seed_everything
        world = self.trainer.world_size if self.trainer is not None else 1
        if world > 1:
            rank = self.trainer.global_rank
            order = DistributedSampler(data, world, rank, shuffle=shuffle, seed=seed)
        elif shuffle:
            order = RandomSampler(data, generator=torch.Generator().manual_seed(seed))
        else:
            order = SequentialSampler(data)
        batches = EpochBatchSampler(order, self.batch_size, False)
        if split[0].in_memory:  # indexing memory: workers would only add copies
            return DataLoader(data, batch_sampler=batches, collate_fn=as_is)
        where = self.trains_on()
        gpu = where is not None and where.type == "cuda"
        workers = self.num_workers
        return DataLoader(
            data,
            batch_sampler=batches,
            collate_fn=as_is,
            num_workers=workers,
            pin_memory=gpu,
            persistent_workers=workers > 0,
        )

    def on_after_batch_transfer(
        self, batch: tuple[torch.Tensor, torch.Tensor], dataloader_idx: int
    ) -> Any:
        x, y = batch
        if self.augment is not None and self.trainer is not None and self.trainer.training:
            x = self.augment(x)
        return self.inputs(x), y
