"""What a run prints: each log line once, no library noise a user cannot act on, and a line per
epoch where no progress bar shows (output to a file or a pipe).

Lightning, lightning.fabric and torchmetrics attach their own stderr handlers, so under Hydra
(which logs to the console and to the job's log file) every Lightning INFO line showed twice.
`quiet_libraries()` removes those handlers and lets the records reach Hydra's handlers once.
Lightning's model summary counts FLOPs as 0 for our nets; the Trainer's `enable_model_summary`
prints cnnexp's own per-layer summary instead (cnnexp/train.py: the table of `task=inspect`).
"""

from __future__ import annotations

import logging
import sys
import time
import warnings

import lightning as L

from cnnexp.metrics import METRICS

EPOCH_LINE = [f"{stage}_{m}" for stage in ("train", "val") for m in METRICS]  # what it shows
OWN_HANDLERS = ("lightning", "lightning.pytorch", "lightning.fabric", "torchmetrics")
NOISE = (  # (logger, message part): records a user cannot act on
    ("lightning.pytorch.utilities.rank_zero", "litlogger"),  # an advert
    ("torch.utils.cpp_extension", "No CUDA runtime is found"),  # model.compile on a CPU machine
)
WARNINGS = (  # message patterns of warnings that say nothing true about a cnnexp run
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # inside Lightning's pytree helper
    # cnnexp logs once per epoch (cnnexp/models/classifier.py), never every n steps:
    r"The number of training batches .* is smaller than the logging interval",
)


def quiet_libraries() -> None:
    """Each library log record once (through the root's, i.e. Hydra's, handlers), minus noise;
    safe to call more than once."""
    for name in OWN_HANDLERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    for name, part in NOISE:
        logger = logging.getLogger(name)
        if not any(getattr(f, "cnnexp_part", None) == part for f in logger.filters):
            logger.addFilter(_dropping(part))
    for pattern in WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


def _dropping(part: str) -> logging.Filter:
    class Drop(logging.Filter):
        cnnexp_part = part

        def filter(self, record: logging.LogRecord) -> bool:
            return part not in record.getMessage()

    return Drop()


class EpochLines(L.Callback):
    """A line per epoch on stdout (epoch index as the MLflow step, train and val loss and acc,
    seconds, progress), for a console without a progress bar: output to a file or a pipe.
    Last among the callbacks, so its seconds include the epoch's analysis snapshots."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()  # a resume can restart inside an epoch: no epoch start

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        done = trainer.callback_metrics
        values = [f"{key} {float(done[key]):.4f}" for key in EPOCH_LINE if key in done]
        seconds = time.perf_counter() - self.start
        total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        print(
            f"epoch {trainer.current_epoch}  {'  '.join(values)}  {seconds:.1f} s"
            f"  [{trainer.current_epoch + 1}/{total}]",
            flush=True,
        )


def epoch_lines(progress_bar: bool | None) -> tuple[bool, list[L.Callback]]:
    """(enable_progress_bar, callbacks) for the Trainer: unless trainer.enable_progress_bar
    says otherwise, a bar only on a terminal (elsewhere it ends as one line of noise); a line
    per epoch wherever no bar shows on a terminal."""
    terminal = sys.stdout.isatty()  # where Lightning's bar and these lines go
    bar = terminal if progress_bar is None else progress_bar
    return bar, [] if bar and terminal else [EpochLines()]
