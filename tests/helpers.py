"""Callbacks that tests plug into real runs through the CLI (`+callbacks.x._target_=...`)."""

import lightning as L


class FailAtEpoch(L.Callback):
    """Raise inside training, to check that the run ends FAILED with the error recorded."""

    def __init__(self, epoch: int = 0) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError(f"planned failure at epoch {self.epoch}")
