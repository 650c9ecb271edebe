"""Callbacks that tests plug into real runs through the CLI (`+callbacks.x._target_=...`)."""

import os
import signal
import time
from pathlib import Path

import lightning as L
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.utilities.exceptions import SIGTERMException


class FailAtEpoch(L.Callback):
    """Raise inside training, to check that the run ends FAILED with the error recorded."""

    def __init__(self, epoch: int = 0) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError(f"planned failure at epoch {self.epoch}")


class PauseAt(L.Callback):
    """At the start of batch `batch` of epoch `epoch`, write the file `marker` and wait there
    until the file `<marker>.go` appears (or a signal ends the wait): the test acts on an event,
    the marker, never after a guessed sleep."""

    def __init__(self, marker: str, epoch: int = 1, batch: int = 2, job: int | None = None) -> None:
        self.marker, self.epoch, self.batch, self.job = Path(marker), epoch, batch, job

    def on_train_batch_start(self, trainer: L.Trainer, module, batch, batch_idx: int) -> None:
        if (trainer.current_epoch, batch_idx) != (self.epoch, self.batch):
            return
        if self.job is not None and HydraConfig.get().job.num != self.job:  # -m: that job only
            return
        self.marker.write_text(str(os.getpid()))
        go = self.marker.with_suffix(".go")
        while not (go.exists() or trainer.received_sigterm):  # SIGINT raises in the sleep;
            time.sleep(0.05)  # Lightning's SIGTERM handler sets the flag, then stops the loop


class StopAtEpoch(L.Callback):
    """Stop inside epoch `epoch` (at batch 2) as SIGTERM would: Lightning's SIGTERMException."""

    def __init__(self, epoch: int = 1) -> None:
        self.epoch = epoch

    def on_train_batch_start(self, trainer: L.Trainer, module, batch, batch_idx: int) -> None:
        if (trainer.current_epoch, batch_idx) == (self.epoch, 2):
            raise SIGTERMException()


class FailAtSetup(L.Callback):
    """Fail before training starts (after the run's checks passed)."""

    def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        raise RuntimeError("planned failure in setup")


def default_sigint() -> None:
    """`preexec_fn` for a child that a test interrupts: SIGINT acts as Ctrl-C in a terminal.
    A shell that starts the suite in the background (`cmd &` without job control) hands it
    SIGINT ignored, and an ignored signal stays ignored across exec: Python would then never
    raise KeyboardInterrupt in the child and the test would wait forever."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
