"""TensorDataModule: three in-memory splits served one fancy-indexed batch at a time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    RandomSampler,
    SequentialSampler,
    TensorDataset,
)

from cnnexp.data.splits import Split, Splits


class BatchIndexed(TensorDataset):
    """A TensorDataset that serves a whole batch with one indexing operation (DataLoader calls
    __getitems__ with the batch's positions): no per-image collation."""

    def __getitems__(self, positions: list[int]) -> tuple[torch.Tensor, ...]:
        index = torch.as_tensor(positions)
        return tuple(t[index] for t in self.tensors)


def as_is(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return batch


class EpochBatchSampler(BatchSampler):
    """A BatchSampler that passes Lightning's set_epoch on (a DistributedSampler reshuffles)."""

    def set_epoch(self, epoch: int) -> None:
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(epoch)


class TensorDataModule(L.LightningDataModule):
    """Train/val/test tensors held in memory; `augment` (batch → batch, on the batch's device)
    changes training batches only."""

    def __init__(
        self,
        splits: Splits,
        batch_size: int,
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.name = splits.name
        self.train, self.val, self.test = splits.train, splits.val, splits.test
        self.class_names = list(splits.class_names)
        self.num_classes = len(self.class_names)
        self.input_shape: tuple[int, int, int] = tuple(splits.train[0].shape[1:])
        self.mean, self.std = splits.mean, splits.std
        self.batch_size = batch_size
        self.augment = augment

    def train_dataloader(self) -> DataLoader:
        overfitting = self.trainer is not None and self.trainer.overfit_batches > 0
        return self._batches(BatchIndexed(*self.train), shuffle=not overfitting)  # same batches

    def val_dataloader(self) -> DataLoader:
        return self._batches(BatchIndexed(*self.val))

    def test_dataloader(self) -> DataLoader:
        return self._batches(BatchIndexed(*self.test))

    def _batches(self, data: TensorDataset, shuffle: bool = False) -> DataLoader:
        """Each step indexes the tensors once with a list of positions (a batch sampler, so
        Lightning's overfit_batches keeps our loaders).
        Under DDP each process gets its own shard (DistributedSampler; Lightning's own sampler
        swap is off: trainer.use_distributed_sampler=false, it would unbatch these loaders)."""
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
        return DataLoader(data, batch_sampler=batches, collate_fn=as_is)

    def on_after_batch_transfer(self, batch: Split, dataloader_idx: int) -> Any:
        if self.augment is None or self.trainer is None or not self.trainer.training:
            return batch
        x, y = batch
        return self.augment(x), y
