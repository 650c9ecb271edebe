"""What the net gets wrong: the confusion matrix (torchmetrics), per-class accuracy, and the
misclassified images it was surest about.

Images `confusion_matrix` (rows: true class, each row normalised, counts printed) and
`misclassified` (true → predicted, confidence) at every analysis step (cnnexp/analysis/
snapshot.py), so the UI's step slider finds them where it finds the others: on the validation
set before training and every `every` epochs; at the last step on the test set, logged when the
test ends (the best checkpoint's weights when one was kept), with metrics
`test_class_acc/<class>`; that step is the number of epochs trained, like `test_acc`.
"""

from __future__ import annotations

import math
import re

import lightning as L
import numpy as np
import torch
from matplotlib.figure import Figure
from torchmetrics.classification import MulticlassConfusionMatrix

from cnnexp.analysis.images import card_figure, figure_pixels, minmax
from cnnexp.analysis.snapshot import SnapshotLogger, is_last_epoch, step_words
from cnnexp.models.modules import eval_mode

VAL_IMAGES = 2000  # validation images a snapshot's confusion matrix counts (at most)
BATCH = 256
Mistake = tuple[float, torch.Tensor, int, int]  # (confidence, image, true class, predicted)


def surest_mistakes(
    wrong: list[Mistake], probs: torch.Tensor, x: torch.Tensor, y: torch.Tensor, n: int
) -> list[Mistake]:
    """`wrong` plus this batch's mistakes, the `n` most confident kept."""
    confidence, predicted = probs.max(dim=1)
    for i in (predicted != y).nonzero().flatten().tolist():
        wrong.append((confidence[i].item(), x[i].cpu(), int(y[i]), int(predicted[i])))
    return sorted(wrong, key=lambda w: -w[0])[:n]


def log_mistakes(
    trainer: L.Trainer,
    step: int,
    counts: np.ndarray,
    wrong: list[Mistake],
    names: list[str],
    title: str,
) -> None:
    """Images `confusion_matrix` and `misclassified` (when there is a mistake) at `step`;
    `title` says which set and when."""
    client, run_id = trainer.logger.experiment, trainer.logger.run_id
    picture = confusion_figure(counts, names, title)
    client.log_image(run_id, figure_pixels(picture), key="confusion_matrix", step=step)
    if wrong:
        picture = misclassified_figure(wrong, names, title)
        client.log_image(run_id, figure_pixels(picture), key="misclassified", step=step)


class ValidationMistakes(SnapshotLogger):
    """Confusion matrix and surest mistakes on (up to VAL_IMAGES) validation images at step 0
    and every `every` epochs but the last (the test's images take that step)."""

    def __init__(self, every: int, datamodule, resumed: bool = False, n_images: int = 12) -> None:
        super().__init__(every, resumed)
        self.x, self.y = datamodule.val[0][:VAL_IMAGES], datamodule.val[1][:VAL_IMAGES]
        self.inputs, self.names, self.n_images = datamodule.inputs, datamodule.class_names, n_images

    def snapshot(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        if step and is_last_epoch(trainer):
            return  # MistakesLogger logs this step from the test
        n = len(self.names)
        counts, wrong = np.zeros((n, n), dtype=np.int64), []
        with eval_mode(pl_module), torch.no_grad():
            for start in range(0, len(self.y), BATCH):
                x = self.inputs(self.x[start : start + BATCH]).to(pl_module.device)
                y = self.y[start : start + BATCH].to(pl_module.device)
                probs = pl_module(x).float().softmax(dim=1)
                np.add.at(counts, (y.cpu().numpy(), probs.argmax(1).cpu().numpy()), 1)
                wrong = surest_mistakes(wrong, probs, x, y, self.n_images)
        title = f"validation set, {step_words(step)}"
        log_mistakes(trainer, step, counts, wrong, self.names, title)


class MistakesLogger(L.Callback):
    """Confusion matrix, per-class accuracy and the `n_images` most confident mistakes."""

    def __init__(self, class_names: list[str], n_images: int = 12) -> None:
        self.class_names, self.n_images = class_names, n_images
        self.matrix = MulticlassConfusionMatrix(len(class_names))
        self.wrong: list[Mistake] = []

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
        self.matrix.update(probs.argmax(dim=1), y)
        self.wrong = surest_mistakes(self.wrong, probs, x, y, self.n_images)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        counts = self.matrix.compute().cpu().numpy()  # every rank: the sum syncs across them
        if trainer.logger is None or not trainer.is_global_zero:
            return
        totals = counts.sum(axis=1)
        per_class = {
            f"test_class_acc/{metric_safe(name)}": float(counts[i, i] / totals[i])
            for i, name in enumerate(self.class_names)
            if totals[i]
        }
        step = trainer.current_epoch  # epochs trained, like test_acc
        trainer.logger.log_metrics(per_class, step=step)
        title = "test set, the weights test_acc measures"
        log_mistakes(trainer, step, counts, self.wrong, self.class_names, title)


def metric_safe(name: str) -> str:
    """A class name as MLflow accepts it in a metric key."""
    return re.sub(r"[^\w\-. /]", "_", str(name))


def confusion_figure(counts: np.ndarray, class_names: list[str], title: str) -> Figure:
    """Rows: true class, normalised to 1 (colour); the counts printed in each cell (up to 30
    classes)."""
    n = len(class_names)
    fig = card_figure(0.9)
    ax = fig.add_subplot()
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    bar = fig.colorbar(ax.imshow(share, cmap="Blues", vmin=0, vmax=1), ax=ax)
    bar.set_label("share of true class", fontsize=6)
    bar.ax.tick_params(labelsize=5)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    colour = "white" if share[i, j] > 0.5 else "black"
                    ax.text(j, i, str(int(counts[i, j])), ha="center", va="center",
                            fontsize=5 if n <= 12 else 3, color=colour)  # fmt: skip
        ax.set_xticks(range(n), class_names, rotation=90 if n > 10 else 0, fontsize=5)
        ax.set_yticks(range(n), class_names, fontsize=5)
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    ax.set_xlabel("predicted", fontsize=6)
    ax.set_ylabel("true", fontsize=6)
    ax.set_title(f"{title}\naccuracy {accuracy:.1%}", fontsize=6)
    return fig


def misclassified_figure(wrong: list[Mistake], class_names: list[str], title: str) -> Figure:
    """The most confident mistakes, each titled 'true → predicted confidence', 6 a row."""
    cols = min(6, len(wrong))
    rows = math.ceil(len(wrong) / cols)
    fig = card_figure((0.55 * rows + 0.2) / (0.43 * cols))  # panels 0.43 in + a title
    fig.suptitle(f"Surest mistakes, {title}", fontsize=6)
    for k, (confidence, image, true, predicted) in enumerate(wrong):
        ax = fig.add_subplot(rows, cols, k + 1)
        img = minmax(image.float())
        if img.shape[0] == 3:
            ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
        else:
            ax.imshow(img[0].numpy(), cmap="gray", interpolation="nearest")
        ax.set_title(f"{class_names[true]}→{class_names[predicted]} {confidence:.0%}", fontsize=5)
        ax.axis("off")
    return fig
