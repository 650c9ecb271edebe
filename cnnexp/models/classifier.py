"""Classifier: the LightningModule that trains any net with cross-entropy and torchmetrics."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from cnnexp.config import ConfigError

RUN_ID_KEY = "mlflow_run_id"  # where a checkpoint keeps the MLflow run it belongs to
OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler] | None


class TrainingDiverged(ConfigError):
    """The training loss became NaN or infinite: almost always a too large learning rate."""


class Classifier(L.LightningModule):
    """Logs `<stage>_loss` and `<stage>_acc` once per epoch with step = epoch index; stops with
    TrainingDiverged on a non-finite training loss; checkpoints carry the MLflow run id."""

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.acc = nn.ModuleDict(
            {
                f"{stage}_acc": MulticlassAccuracy(num_classes, average="micro")
                for stage in ("train", "val", "test")
            }
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        logits = self.net(x)
        loss = F.cross_entropy(logits, y)
        self.acc[f"{stage}_acc"].update(logits.detach(), y)
        self.log(
            f"{stage}_loss",
            loss.detach(),
            on_step=False,
            on_epoch=True,
            batch_size=len(y),
            sync_dist=True,
        )
        self.log(
            f"{stage}_acc",
            self.acc[f"{stage}_acc"],
            on_step=False,
            on_epoch=True,
            batch_size=len(y),
        )
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, "train")
        if not torch.isfinite(loss):
            lr = self.trainer.optimizers[0].param_groups[0]["lr"]
            raise TrainingDiverged(
                f"optimizer.lr: training diverged, loss {loss.item()} at epoch "
                f"{self.current_epoch} step {self.global_step} with lr {lr:g} (lower optimizer.lr "
                "or clip gradients: +trainer.gradient_clip_val=1.0)"
            )
        return loss

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        run_id = getattr(self.logger, "run_id", None)
        if run_id:  # `resume=<checkpoint>` finds the run to continue
            checkpoint[RUN_ID_KEY] = run_id

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def _log_epoch_as_step(self) -> None:
        """Lightning uses a logged `step` value as the MLflow step: make it the epoch index."""
        self.log("step", float(self.current_epoch), on_step=False, on_epoch=True, sync_dist=True)

    def on_train_epoch_end(self) -> None:
        self._log_epoch_as_step()

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._log_epoch_as_step()

    def on_test_epoch_end(self) -> None:
        self._log_epoch_as_step()

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }
