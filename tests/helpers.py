"""Callbacks that tests plug into real runs through the CLI (`+callbacks.x._target_=...`)."""

import json
import os
import signal
import time
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.utilities.exceptions import SIGTERMException


class FailAtEpoch(L.Callback):
    """Raise inside training, to check that the run ends FAILED with the error recorded
    (under DDP: on rank `rank` only, when given)."""

    def __init__(self, epoch: int = 0, rank: int | None = None) -> None:
        self.epoch, self.rank = epoch, rank

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.rank is not None and trainer.global_rank != self.rank:
            return
        if trainer.current_epoch == self.epoch:
            raise RuntimeError(f"planned failure at epoch {self.epoch}")


class PauseAt(L.Callback):
    """At the start of batch `batch` of epoch `epoch`, write the file `marker` and wait there
    until the file `<marker>.go` appears (or a signal ends the wait): the test acts on an event,
    the marker, never after a guessed sleep. Under DDP, `rank` pauses that rank alone."""

    def __init__(
        self,
        marker: str,
        epoch: int = 1,
        batch: int = 2,
        job: int | None = None,
        rank: int | None = None,
    ) -> None:
        self.marker, self.epoch, self.batch, self.job = Path(marker), epoch, batch, job
        self.rank = rank

    def on_train_batch_start(self, trainer: L.Trainer, module, batch, batch_idx: int) -> None:
        if (trainer.current_epoch, batch_idx) != (self.epoch, self.batch):
            return
        if self.rank is not None and trainer.global_rank != self.rank:
            return
        if self.job is not None and HydraConfig.get().job.num != self.job:  # -m: that job only
            return
        self.marker.write_text(str(os.getpid()))
        go = self.marker.with_suffix(".go")
        while not (go.exists() or trainer.received_sigterm):  # SIGINT raises in the sleep;
            time.sleep(0.05)  # Lightning's SIGTERM handler sets the flag, then stops the loop


class PauseBeforeTest(L.Callback):
    """After the last epoch, once fit ends (the test not yet begun), write the file `marker` and
    wait until `<marker>.go` appears or a signal ends the wait (Lightning's SIGTERM handler
    only sets a flag)."""

    def __init__(self, marker: str) -> None:
        self.marker = Path(marker)

    def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.marker.write_text(str(os.getpid()))
        while not (self.marker.with_suffix(".go").exists() or trainer.received_sigterm):
            time.sleep(0.05)


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


def is_nhwc(t: torch.Tensor) -> bool:
    """Whether `t` is laid out channels_last (NHWC) in memory."""
    return t.is_contiguous(memory_format=torch.channels_last)


class MemoryFormatProbe(L.Callback):
    """Records, at every training, validation and test step, whether the net's 4-D weights and
    the batch its first conv receives are in channels_last memory: JSON lines `{"stage",
    "weights", "input"}` in the file `path`, written when the trainer is done. Only the steps'
    own forward passes count (analysis callbacks call the net outside them, on NCHW images)."""

    def __init__(self, path: str) -> None:
        self.path, self.rows, self.stage, self.net = Path(path), [], None, None

    def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        if self.net is None:  # fit, then test: one hook
            self.net = module.net
            first = next(m for m in self.net.modules() if isinstance(m, torch.nn.Conv2d))
            first.register_forward_pre_hook(self.record)

    def record(self, _conv: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        if self.stage is not None:
            weights = [p for p in self.net.parameters() if p.dim() == 4]
            row = {"weights": all(map(is_nhwc, weights)), "input": is_nhwc(inputs[0])}
            self.rows.append({"stage": self.stage, **row})

    def on_train_batch_start(self, *_) -> None:
        self.stage = "train"

    def on_validation_batch_start(self, *_) -> None:
        self.stage = "validation"

    def on_test_batch_start(self, *_) -> None:
        self.stage = "test"

    def on_train_batch_end(self, *_) -> None:
        self.stage = None

    on_validation_batch_end = on_test_batch_end = on_train_batch_end

    def teardown(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        self.path.write_text("".join(json.dumps(row) + "\n" for row in self.rows))
