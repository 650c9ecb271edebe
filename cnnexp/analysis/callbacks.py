"""Lightning callbacks that show the inside of the net in its MLflow run (`conf/analysis/`).

Images go through `MlflowClient.log_image(run_id, image, key=..., step=...)` with step = epochs
trained (0 = before training); health metrics use step = epoch index, like `val_acc`.
"""

from __future__ import annotations

import math

import lightning as L
import matplotlib
import numpy as np
import torch
from omegaconf import DictConfig

from cnnexp.analysis.erf import (
    effective_receptive_field,
    erf_figure,
    erf_size,
    last_spatial_layer,
)
from cnnexp.analysis.fit import FitDiagnosis
from cnnexp.analysis.gradcam import gradcam_figure
from cnnexp.analysis.health import block_outputs, conv_blocks, grad_norms, network_health
from cnnexp.analysis.images import figure_pixels, minmax
from cnnexp.analysis.mistakes import MistakesLogger
from cnnexp.analysis.receptive_field import format_table, receptive_fields, rf_at_last_spatial_layer
from cnnexp.analysis.top_patches import all_top_patches, block_fields


def build_callbacks(
    cfg: DictConfig, datamodule: L.LightningDataModule, resumed: bool = False
) -> list[L.Callback]:
    """The analysis callbacks `cfg` (the checked `analysis` group) asks for; only the (cheap)
    fit diagnosis when disabled. A resumed run logs no second step-0 snapshot."""
    labels = datamodule.val[1]
    chance = float(labels.bincount().max() / len(labels)) if len(labels) else 0.0
    if not cfg.enabled:
        return [FitDiagnosis(chance)]
    input_shape, every = datamodule.input_shape, cfg.every_n_epochs
    val = datamodule.val[0]
    images = datamodule.inputs(val[: cfg.n_images])
    return [
        ReceptiveFieldLogger(input_shape, resumed),
        ERFLogger(every, input_shape, cfg.erf_samples, resumed),
        FeatureMapLogger(every, images, cfg.max_channels, cfg.normalize, cfg.tile_px, resumed),
        KernelLogger(every, cfg.tile_px, resumed),
        HealthLogger(datamodule.inputs(val[: cfg.health_images])),
        GradCamLogger(
            every,
            input_shape,
            images,
            datamodule.val[1][: cfg.n_images],
            datamodule.class_names,
            resumed,
        ),  # fmt: skip
        TopPatchLogger(input_shape, datamodule.inputs(val[: cfg.patch_images]), cfg, resumed),
        MistakesLogger(datamodule.class_names),
        FitDiagnosis(chance),
    ]


class ReceptiveFieldLogger(L.Callback):
    """At fit start: artifact `receptive_field.txt` (per layer) and metric `receptive_field`
    (r at the last layer with a map; the input's height where that field covers the input)."""

    def __init__(self, input_shape: tuple[int, int, int], resumed: bool = False) -> None:
        self.input_shape, self.resumed = input_shape, resumed

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.resumed:
            return
        rows = receptive_fields(pl_module.net, self.input_shape)
        client, run_id = trainer.logger.experiment, trainer.logger.run_id
        client.log_text(run_id, format_table(rows) + "\n", "receptive_field.txt")
        trainer.logger.log_metrics({"receptive_field": rf_at_last_spatial_layer(rows)}, step=0)


class SnapshotLogger(L.Callback):
    """Calls `snapshot` before training (step 0), every `every` epochs and after the last one."""

    def __init__(self, every: int, resumed: bool = False) -> None:
        self.every, self.resumed = every, resumed

    def snapshot(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        raise NotImplementedError

    def log_image(self, trainer: L.Trainer, image: np.ndarray, key: str, step: int) -> None:
        trainer.logger.experiment.log_image(trainer.logger.run_id, image, key=key, step=step)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.resumed:  # a resumed run has its step-0 snapshot
            self.snapshot(trainer, pl_module, 0)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        done = trainer.current_epoch + 1
        out_of_steps = 0 <= trainer.max_steps <= trainer.global_step
        last = done == trainer.max_epochs or trainer.should_stop or out_of_steps
        if done % self.every == 0 or last:
            self.snapshot(trainer, pl_module, done)


class ERFLogger(SnapshotLogger):
    """Image `erf` (heatmap with the theoretical RF square) and metric `erf_size`."""

    def __init__(
        self, every: int, input_shape: tuple[int, int, int], n_samples: int, resumed: bool = False
    ) -> None:
        super().__init__(every, resumed)
        self.input_shape, self.n_samples = input_shape, n_samples
        self.rf_size: int | None = None
        self.layer = ""

    def snapshot(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        net = pl_module.net
        if self.rf_size is None:
            self.rf_size = rf_at_last_spatial_layer(receptive_fields(net, self.input_shape))
            self.layer = last_spatial_layer(net, self.input_shape)
        erf = effective_receptive_field(net, self.input_shape, self.n_samples, self.layer)
        fig = erf_figure(erf, self.rf_size, title=f"Effective receptive field, epoch {step}")
        self.log_image(trainer, figure_pixels(fig), "erf", step)
        trainer.logger.log_metrics({"erf_size": erf_size(erf)}, step=step)


class FeatureMapLogger(SnapshotLogger):
    """Image `feature_maps/convN` per conv block: a row per fixed validation image, the input
    then up to `max_channels` channels of the block's output (after its activation)."""

    def __init__(
        self,
        every: int,
        images: torch.Tensor,
        max_channels: int,
        normalize: str,
        tile_px: int,
        resumed: bool = False,
    ) -> None:
        super().__init__(every, resumed)
        self.images, self.max_channels = images, max_channels
        self.normalize, self.tile_px = normalize, tile_px

    def snapshot(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        x = self.images.to(pl_module.device)
        inputs = [as_input(minmax(image)) for image in self.images.float()]
        for name, maps in block_outputs(pl_module.net, x).items():
            maps = maps[:, : self.max_channels].float().cpu()
            if self.normalize == "layer":
                maps = minmax(maps)
            rows = [
                [inputs[i]] + [viridis(minmax(c) if self.normalize == "channel" else c) for c in m]
                for i, m in enumerate(maps)
            ]
            self.log_image(trainer, tile_grid(rows, self.tile_px), f"feature_maps/{name}", step)


class KernelLogger(SnapshotLogger):
    """Image `kernels/conv1`: the first conv's filters, zero = mid grey, positive lighter,
    negative darker (RGB when the input is)."""

    def __init__(self, every: int, tile_px: int, resumed: bool = False) -> None:
        super().__init__(every, resumed)
        self.tile_px = tile_px

    def snapshot(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        blocks = conv_blocks(pl_module.net)
        if not blocks:
            return
        name, block = next(iter(blocks.items()))
        w = getattr(block, "conv", block).weight.detach().float().cpu()
        w = w / (2 * w.abs().max().clamp_min(1e-12)) + 0.5  # [-max, max] -> [0, 1]
        tiles = [as_input(k) for k in w]
        cols = math.ceil(math.sqrt(len(tiles)))
        rows = [tiles[i : i + cols] for i in range(0, len(tiles), cols)]
        self.log_image(trainer, tile_grid(rows, self.tile_px), f"kernels/{name}", step)


class GradCamLogger(SnapshotLogger):
    """Image `gradcam`: Grad-CAM at the last spatial layer for the fixed validation images, for
    the true and the predicted class (cnnexp/analysis/gradcam.py)."""

    def __init__(
        self,
        every: int,
        input_shape: tuple[int, int, int],
        images: torch.Tensor,
        labels: torch.Tensor,
        class_names: list[str],
        resumed: bool = False,
    ) -> None:
        super().__init__(every, resumed)
        self.input_shape, self.images, self.labels = input_shape, images, labels
        self.class_names = class_names

    def snapshot(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        net = pl_module.net
        layer = net.get_submodule(last_spatial_layer(net, self.input_shape))
        x, y = self.images.to(pl_module.device), self.labels.to(pl_module.device)
        fig = gradcam_figure(net, layer, x, y, self.class_names)
        self.log_image(trainer, figure_pixels(fig), "gradcam", step)


class TopPatchLogger(SnapshotLogger):
    """Image `top_patches/convN` per conv block before training and after the last epoch: a row
    per channel (up to `max_channels`), its `top_k` strongest validation patches, each cut at
    the unit's exact receptive field (cnnexp/analysis/top_patches.py)."""

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        images: torch.Tensor,
        cfg: DictConfig,
        resumed: bool = False,
    ) -> None:
        super().__init__(every=10**9, resumed=resumed)  # step 0 and the end only
        self.input_shape, self.images = input_shape, images
        self.k, self.max_channels, self.tile_px = cfg.top_k, cfg.max_channels, cfg.tile_px
        self.fields: dict | None = None

    def snapshot(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        net = pl_module.net
        if self.fields is None:
            self.fields = block_fields(net, self.input_shape)
        x = self.images.to(pl_module.device)
        for name, rows in all_top_patches(net, x, self.fields, self.k, self.max_channels).items():
            tiles = [[as_input(p) for p in row] for row in rows]
            self.log_image(trainer, tile_grid(tiles, self.tile_px), f"top_patches/{name}", step)


class HealthLogger(L.Callback):
    """Metrics `health/convN/{mean,std,dead_fraction|saturation,grad_norm}` each epoch: activations
    on fixed validation images (eval mode), gradients of the epoch's last training batch."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images
        self.grad_norms: dict[str, float] = {}

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if trainer.fit_loop.epoch_loop.batch_idx + 1 >= trainer.num_training_batches:
            self.grad_norms = grad_norms(pl_module.net)  # the epoch's last batch only: cheap

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = network_health(pl_module.net, self.images.to(pl_module.device))
        trainer.logger.log_metrics({**metrics, **self.grad_norms}, step=trainer.current_epoch)


def viridis(t: torch.Tensor) -> np.ndarray:
    """An H×W map in [0, 1] -> H×W×3 float array in viridis (dark blue low, yellow high)."""
    return matplotlib.colormaps["viridis"](t.clamp(0, 1).numpy())[..., :3]


OUTSIDE_RGB = (0.55, 0.75, 1.0)  # light blue: a patch's part past the image border (NaN)


def as_input(t: torch.Tensor) -> np.ndarray:
    """C×H×W in [0, 1] drawn as the input looks: RGB when C = 3, else its first channel in grey;
    NaN (top_patches.OUTSIDE) in OUTSIDE_RGB."""
    t = t.float()
    rgb = t[:3] if t.shape[0] == 3 else t[:1].expand(3, -1, -1)
    picture = rgb.clamp(0, 1).permute(1, 2, 0).numpy().copy()
    picture[rgb.isnan().any(0).numpy()] = OUTSIDE_RGB
    return picture


def tile_grid(rows: list[list[np.ndarray]], tile_px: int) -> np.ndarray:
    """Rows of H×W×3 tiles -> one uint8 image; each tile is scaled (nearest neighbour) to the
    largest tile's size, at least tile_px on its short side; 1 px white gaps."""
    h = max(tile.shape[0] for row in rows for tile in row)
    w = max(tile.shape[1] for row in rows for tile in row)
    scale = max(1, math.ceil(tile_px / min(h, w)))
    th, tw = h * scale, w * scale
    cols = max(len(row) for row in rows)
    grid = np.ones(((th + 1) * len(rows) - 1, (tw + 1) * cols - 1, 3))
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            ys = np.arange(th) * tile.shape[0] // th
            xs = np.arange(tw) * tile.shape[1] // tw
            grid[r * (th + 1) : r * (th + 1) + th, c * (tw + 1) : c * (tw + 1) + tw] = tile[ys][
                :, xs
            ]
    return (grid * 255).round().astype(np.uint8)
