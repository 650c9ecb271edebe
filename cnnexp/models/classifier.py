"""Classifier: the LightningModule that trains any net with cross-entropy and torchmetrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from cnnexp.errors import RunStopped
from cnnexp.metrics import CURVES, METRICS

NAN_CHECK_EVERY = 50  # training steps between non-finite loss checks on a GPU
RUN_ID_KEY = "mlflow_run_id"  # where a checkpoint keeps the MLflow run it belongs to
INFERENCE_KEY = "cnnexp_inference"  # what applying the net needs (inference_facts), plain data
MONITORED = CURVES  # what a ModelCheckpoint or EarlyStopping can watch (others: MLflow only)
OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler] | None


class TrainedOn(Protocol):
    """What a net learnt from (a TensorDataModule): its name, images, classes, normalisation."""

    name: str
    input_shape: tuple[int, int, int]
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]


def inference_facts(model: dict, data: TrainedOn) -> dict[str, Any]:
    """What applying the net needs, as plain data (weights_only=True loads it): its model config
    (models.build rebuilds it), the input shape C×H×W, class names, the per-channel mean/std the
    training images were normalised with (0..1 scale), and the data config's name."""
    return {
        "model": model,
        "input_shape": list(data.input_shape),
        "class_names": [str(name) for name in data.class_names],
        "mean": [float(m) for m in data.mean],
        "std": [float(s) for s in data.std],
        "data": str(data.name),
    }


class TrainingDiverged(RunStopped):
    """The training loss became NaN or infinite: almost always a too large learning rate."""


class Classifier(L.LightningModule):
    """Cross-entropy and accuracy per stage. Everything is logged with step = epoch index, once
    per epoch, at the epoch's end (`on_train_epoch_end`): train_loss/train_acc of the epoch and
    val_loss/val_acc of the last validation that ran in it (validation inside an epoch, through
    `trainer.val_check_interval`, still feeds checkpoints, early stopping and the progress bar);
    test_loss/test_acc at step = epochs trained. Stops with TrainingDiverged on a non-finite
    training loss, checked without a host sync per step; checkpoints carry the MLflow run id and
    `inference` (inference_facts: what task=eval|predict need to apply the net); testing and
    predicting need no optimizer (None).

    `channels_last` converts the net (in place) and every batch to NHWC memory; `compile` sends
    the training, validation and test steps through torch.compile(net), kept out of the module
    tree: the checkpoint's keys stay `net.*`, and analysis hooks on the net's blocks see the
    eager net."""

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory = None,
        inference: dict[str, Any] | None = None,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net = net.to(memory_format=torch.channels_last) if channels_last else net
        step_net = torch.compile(self.net) if compile else self.net  # what _step calls
        object.__setattr__(self, "step_net", step_net)  # not a submodule: no `_orig_mod.` keys
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.inference = inference
        self.acc = nn.ModuleDict(
            {
                f"{stage}_acc": MulticlassAccuracy(num_classes, average="micro")
                for stage in ("train", "val", "test")
            }
        )
        self.validated_in_epoch = -1  # the last epoch in which a validation (not sanity) ran

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.contiguous(memory_format=self.memory_format))

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        logits = self.step_net(x.contiguous(memory_format=self.memory_format))
        loss = F.cross_entropy(logits, y)
        self.acc[f"{stage}_acc"].update(logits.detach(), y)
        options = {"on_step": False, "on_epoch": True, "batch_size": len(y), "logger": False}
        self.log(f"{stage}_loss", loss.detach(), sync_dist=True, **options)
        self.log(f"{stage}_acc", self.acc[f"{stage}_acc"], **options)
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, "train")
        on_host = loss.device.type == "cpu"  # on a GPU the check syncs: every NAN_CHECK_EVERY
        if (on_host or batch_idx % NAN_CHECK_EVERY == 0) and not torch.isfinite(loss):
            self._diverged(loss)  # NaN weights keep the loss NaN, so a later check finds it
        return loss

    def _diverged(self, loss: torch.Tensor) -> None:
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        raise TrainingDiverged(
            f"optimizer.lr: training diverged, loss {loss.item()} at epoch "
            f"{self.current_epoch} step {self.global_step} with lr {lr:g} (lower optimizer.lr "
            "or clip gradients: trainer.gradient_clip_val=1.0)"
        )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        run_id = getattr(self.logger, "run_id", None)
        if run_id:  # `resume=<checkpoint>` finds the run to continue
            checkpoint[RUN_ID_KEY] = run_id
        if self.inference:  # task=eval|predict rebuild and feed the net from this alone
            checkpoint[INFERENCE_KEY] = self.inference

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.validated_in_epoch = self.current_epoch

    def on_train_epoch_end(self) -> None:
        stages = ("train", "val") if self.validated_in_epoch == self.current_epoch else ("train",)
        self._log_stages(stages, self.current_epoch)

    def on_test_epoch_end(self) -> None:
        self._log_stages(("test",), self.current_epoch)

    def _log_stages(self, stages: tuple[str, ...], step: int) -> None:
        if self.logger is None:
            return
        done = self.trainer.callback_metrics
        names = [f"{s}_{m}" for s in stages for m in METRICS]
        self.logger.log_metrics({n: float(done[n]) for n in names if n in done}, step=step)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }
