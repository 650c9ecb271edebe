"""Callbacks that tests plug into real runs through the CLI (`+callbacks.x._target_=...`)."""

import time

import lightning as L


class FailAtEpoch(L.Callback):
    """Raise inside training, to check that the run ends FAILED with the error recorded."""

    def __init__(self, epoch: int = 0) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError(f"planned failure at epoch {self.epoch}")


class SleepPerBatch(L.Callback):
    """Slow training down, so a test can signal the process while it is inside an epoch."""

    def __init__(self, seconds: float = 0.05) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, *args) -> None:
        time.sleep(self.seconds)
