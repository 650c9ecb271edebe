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
import matplotlib
import numpy as np
import torch
from torchmetrics.classification import MulticlassConfusionMatrix

from cnnexp.analysis.images import (
    CARD_PX,
    FONT_PX,
    GAP,
    Label,
    as_input,
    minmax,
    scaled,
    text_px,
    with_text,
)
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
    picture = confusion_picture(counts, names, title)
    client.log_image(run_id, picture, key="confusion_matrix", step=step)
    if wrong:
        client.log_image(
            run_id, misclassified_picture(wrong, names, title), key="misclassified", step=step
        )


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


def _fitting_px(lines: list[str], width: float, px: float = 0.8 * FONT_PX) -> float:
    """The text size (at most `px`, at least 8 px) at which the longest of `lines` fits `width`."""
    longest = max(len(line) for line in lines) or 1
    return max(8.0, min(px, width / (0.6 * longest)))


def confusion_picture(counts: np.ndarray, class_names: list[str], title: str) -> np.ndarray:
    """Rows: true class, normalised to 1 (colour: Blues, white 0 to dark blue 1); the counts
    printed in each cell and every class named (up to 30 classes); CARD_PX wide, no taller."""
    n = len(class_names)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    line = round(1.3 * FONT_PX)
    top = 2 * line + 6 + 2 * line  # the title's two lines, "predicted" and the class names
    named = n <= 30
    names = [str(c) for c in class_names] if named else [""] * n
    name_px = _fitting_px(names, 120)

    def fitted(rows: list[str]) -> tuple[int, int]:
        """(left margin, cell size) with these row labels."""
        left = max(text_px("true", name_px), *(text_px(c, name_px) for c in rows)) + 10
        return left, max(1, min((CARD_PX - left - 8) // n, (CARD_PX - top - 2 * line) // n))

    (left, cell), columns = fitted(names), names
    if named and _fitting_px(names, cell - 2) < 0.7 * FONT_PX:  # too long above a column:
        columns = [str(i) for i in range(n)]  # columns by number, rows by number and name
        names = [f"{name} {i}" for i, name in enumerate(names)]
        left, cell = fitted(names)
    height = top + n * cell + 2 * line  # and the colour key below
    canvas = np.ones((height, CARD_PX, 3))
    colours = matplotlib.colormaps["Blues"](share)[..., :3]
    canvas[top : top + n * cell, left : left + n * cell] = np.kron(
        colours, np.ones((cell, cell, 1))
    )
    labels = [Label(left + n * cell / 2, 2 * line + 6 + line / 2, "predicted", px=0.8 * FONT_PX)]
    labels.append(Label(left - 6, 2 * line + 6 + 1.5 * line, "true", "right", name_px))
    column_px = _fitting_px(columns, cell - 2)
    count_px = _fitting_px([str(int(counts.max()))], cell - 4, 0.7 * FONT_PX)
    for i, name in enumerate(names):
        centre = top + i * cell + cell / 2
        labels.append(Label(left - 6, centre, name, "right", name_px))
        labels.append(Label(left + i * cell + cell / 2, top - line / 2, columns[i], px=column_px))
        for j in range(n):
            if named and counts[i, j]:
                colour = "white" if share[i, j] > 0.5 else "black"
                x = left + j * cell + cell / 2
                labels.append(Label(x, centre, str(int(counts[i, j])), px=count_px, colour=colour))
    key_y, key_w = top + n * cell + line, 120  # the colour key: 0 to 1, what colour means
    ramp = matplotlib.colormaps["Blues"](np.linspace(0, 1, key_w))[:, :3]
    canvas[key_y - 6 : key_y + 6, left + 20 : left + 20 + key_w] = ramp[None]
    labels.append(Label(left + 14, key_y, "0", "right", 0.7 * FONT_PX))
    labels.append(
        Label(left + 26 + key_w, key_y, "1  share of the true class", "left", 0.7 * FONT_PX)
    )
    return with_text(canvas, f"{title}\naccuracy {accuracy:.1%}", labels)


def misclassified_picture(wrong: list[Mistake], class_names: list[str], title: str) -> np.ndarray:
    """The most confident mistakes, each captioned 'true→predicted confidence' (on two lines
    where long class names leave the images larger so), up to 6 a row, each image scaled by
    whole pixels (nearest neighbour) to fill its cell; CARD_PX wide, no taller."""
    pictures = [as_input(minmax(image.float())) for _, image, _, _ in wrong]
    h, w = max(p.shape[0] for p in pictures), max(p.shape[1] for p in pictures)
    title = f"Surest mistakes, {title}"
    if text_px(title) > CARD_PX - 8:  # too long for one line
        title = title.replace(", ", ",\n", 1)
    heading = (title.count("\n") + 1) * round(1.3 * FONT_PX) + 8

    def layout(cols: int, sep: str) -> tuple[float, list[str], float, int]:
        """(scale, captions, their text size, caption height) with `cols` cells a row."""
        captions = [f"{class_names[t]}→{sep}{class_names[p]} {c:.0%}" for c, _, t, p in wrong]
        px = _fitting_px([x for c in captions for x in c.split("\n")], CARD_PX // cols - 2 * GAP)
        caption_h = (sep.count("\n") + 1) * round(1.3 * px) + 2
        rows = math.ceil(len(wrong) / cols)
        fit = min(
            (CARD_PX // cols - 4 * GAP) / w, ((CARD_PX - heading) / rows - caption_h - GAP) / h
        )
        readable = px >= 0.7 * FONT_PX  # 7 px on the card, or the caption takes a wider cell
        return (fit if readable else 0.0), captions, px, caption_h

    options = {
        (c, sep): layout(c, sep) for c in range(min(6, len(wrong)), 0, -1) for sep in ("", "\n")
    }
    cols, sep = max(options, key=lambda o: options[o][0])  # the largest images, then most a row
    fit, captions, caption_px, caption_h = options[cols, sep]
    scale = math.floor(fit) if fit >= 1 else max(fit, 1 / max(h, w))  # whole pixels if room
    th, tw = max(1, math.floor(h * scale)), max(1, math.floor(w * scale))
    cell_w, rows = CARD_PX // cols, math.ceil(len(wrong) / cols)
    canvas = np.ones((heading + rows * (caption_h + th + GAP), CARD_PX, 3))
    labels = []
    for k, (picture, caption) in enumerate(zip(pictures, captions, strict=True)):
        row, col = divmod(k, cols)
        x, y = col * cell_w + (cell_w - tw) // 2, heading + row * (caption_h + th + GAP)
        canvas[y + caption_h : y + caption_h + th, x : x + tw] = scaled(picture, th, tw)
        labels.append(Label(col * cell_w + cell_w / 2, y + caption_h / 2, caption, px=caption_px))
    return with_text(canvas, title, labels)
