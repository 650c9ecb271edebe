"""The steps the analysis logs images at, shared by every image key so the MLflow UI's step
slider finds a picture of each key at each step it offers: 0 (before training), every
`every` epochs and after the last epoch (step = epochs trained)."""

from __future__ import annotations

import lightning as L
import numpy as np


def step_words(step: int) -> str:
    """How an image's title says when it was taken."""
    return "before training" if step == 0 else f"after epoch {step}"


def is_last_epoch(trainer: L.Trainer) -> bool:
    """Whether the epoch that just ended is the last one fit runs."""
    out_of_steps = 0 <= trainer.max_steps <= trainer.global_step
    return trainer.current_epoch + 1 == trainer.max_epochs or trainer.should_stop or out_of_steps


class SnapshotLogger(L.Callback):
    """Calls `snapshot` before training (step 0), every `every` epochs and after the last one;
    a resumed run has its step-0 snapshot already. Under DDP only rank 0 snapshots (what it
    draws feeds the run alone; a snapshot must not enter a collective)."""

    def __init__(self, every: int, resumed: bool = False) -> None:
        self.every, self.resumed = every, resumed

    def snapshot(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        raise NotImplementedError

    def log_image(self, trainer: L.Trainer, image: np.ndarray, key: str, step: int) -> None:
        trainer.logger.experiment.log_image(trainer.logger.run_id, image, key=key, step=step)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.resumed and trainer.is_global_zero:
            self.snapshot(trainer, pl_module, 0)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        done = trainer.current_epoch + 1
        if done % self.every == 0 or is_last_epoch(trainer):
            self.snapshot(trainer, pl_module, done)
