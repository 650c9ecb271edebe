"""What the net gets wrong on the test set: the confusion matrix (torchmetrics), per-class accuracy,
and the misclassified images it was surest about.

Logged when the test ends (the best checkpoint's weights when one was kept): image
`confusion_matrix` (rows: true class, each row normalised, counts printed), metrics
`test_class_acc/<class>`, image `misclassified` (true → predicted, confidence); their step is
the number of epochs trained, like `test_acc`.
"""

from __future__ import annotations

import math
import re

import lightning as L
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torchmetrics.classification import MulticlassConfusionMatrix

from cnnexp.analysis.images import figure_pixels, minmax


class MistakesLogger(L.Callback):
    """Confusion matrix, per-class accuracy and the `n_images` most confident mistakes."""

    def __init__(self, class_names: list[str], n_images: int = 16) -> None:
        self.class_names, self.n_images = class_names, n_images
        self.matrix = MulticlassConfusionMatrix(len(class_names))
        self.wrong: list[tuple[float, torch.Tensor, int, int]] = []  # (confidence, image, y, ŷ)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.matrix = self.matrix.to(pl_module.device)
        self.matrix.reset()
        self.wrong = []

    def on_test_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        x, y = batch
        with torch.no_grad():
            probs = pl_module(x).float().softmax(dim=1)
        confidence, predicted = probs.max(dim=1)
        self.matrix.update(predicted, y)
        for i in (predicted != y).nonzero().flatten().tolist():
            self.wrong.append((confidence[i].item(), x[i].cpu(), int(y[i]), int(predicted[i])))
        self.wrong = sorted(self.wrong, key=lambda w: -w[0])[: self.n_images]

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        counts = self.matrix.compute().cpu().numpy()  # every rank: the sum syncs across them
        if trainer.logger is None or not trainer.is_global_zero:
            return
        client, run_id = trainer.logger.experiment, trainer.logger.run_id
        step = trainer.current_epoch
        totals = counts.sum(axis=1)
        per_class = {
            f"test_class_acc/{metric_safe(name)}": float(counts[i, i] / totals[i])
            for i, name in enumerate(self.class_names)
            if totals[i]
        }
        trainer.logger.log_metrics(per_class, step=step)
        client.log_image(run_id, figure_pixels(confusion_figure(counts, self.class_names)),
                         key="confusion_matrix", step=step)  # fmt: skip
        if self.wrong:
            figure = misclassified_figure(self.wrong, self.class_names)
            client.log_image(run_id, figure_pixels(figure), key="misclassified", step=step)


def metric_safe(name: str) -> str:
    """A class name as MLflow accepts it in a metric key."""
    return re.sub(r"[^\w\-. /]", "_", str(name))


def confusion_figure(counts: np.ndarray, class_names: list[str]) -> Figure:
    """Rows: true class, normalised to 1 (colour); the counts printed in each cell."""
    n = len(class_names)
    side = min(2 + 0.5 * n, 12)
    fig = Figure(figsize=(side + 1, side), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig.colorbar(ax.imshow(share, cmap="Blues", vmin=0, vmax=1), ax=ax, label="share of true class")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    colour = "white" if share[i, j] > 0.5 else "black"
                    ax.text(j, i, str(int(counts[i, j])), ha="center", va="center",
                            fontsize=7, color=colour)  # fmt: skip
        ax.set_xticks(range(n), class_names, rotation=90 if n > 10 else 0, fontsize=7)
        ax.set_yticks(range(n), class_names, fontsize=7)
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    ax.set(
        xlabel="predicted", ylabel="true", title=f"Test confusion matrix (accuracy {accuracy:.1%})"
    )
    return fig


def misclassified_figure(
    wrong: list[tuple[float, torch.Tensor, int, int]], class_names: list[str]
) -> Figure:
    """The most confident mistakes, each titled 'true → predicted (confidence)'."""
    cols = min(8, len(wrong))
    rows = math.ceil(len(wrong) / cols)
    fig = Figure(figsize=(1.4 * cols, 1.6 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    for k, (confidence, image, true, predicted) in enumerate(wrong):
        ax = fig.add_subplot(rows, cols, k + 1)
        img = minmax(image.float())
        if img.shape[0] == 3:
            ax.imshow(img.permute(1, 2, 0).numpy())
        else:
            ax.imshow(img[0].numpy(), cmap="gray")
        ax.set_title(
            f"{class_names[true]} → {class_names[predicted]}\n{confidence:.0%}", fontsize=7
        )
        ax.axis("off")
    return fig
