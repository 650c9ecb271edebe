"""Lightning callbacks that show the inside of the net in its MLflow run (`conf/analysis/`).

Images go through `MlflowClient.log_image(run_id, image, key=..., step=...)` with step = epochs
trained (0 = before training), every key at the same steps (cnnexp/analysis/snapshot.py), each
drawn to be read at an MLflow card's size (cnnexp/analysis/images.py); health metrics use
step = epoch index, like `val_acc`.

Under DDP every rank gets the same callbacks (so a collective, like the confusion matrix's sum,
is entered by all); the work that only feeds the run is rank 0's (`trainer.is_global_zero`).
"""

from __future__ import annotations

import lightning as L
import torch
from omegaconf import DictConfig

from cnnexp.analysis.erf import (
    effective_receptive_field,
    erf_figure,
    erf_size,
    last_spatial_layer,
)
from cnnexp.analysis.gradcam import gradcam_figure
from cnnexp.analysis.health import block_outputs, conv_blocks, grad_norms, network_health
from cnnexp.analysis.images import TileGrid, as_input, figure_pixels, minmax, render_grid, viridis
from cnnexp.analysis.mistakes import MistakesLogger, ValidationMistakes
from cnnexp.analysis.receptive_field import format_table, receptive_fields, rf_at_last_spatial_layer
from cnnexp.analysis.snapshot import SnapshotLogger, step_words
from cnnexp.analysis.top_patches import all_top_patches, block_fields


def build_callbacks(
    cfg: DictConfig, datamodule: L.LightningDataModule, resumed: bool = False
) -> list[L.Callback]:
    """The analysis callbacks `cfg` (the checked `analysis` group) asks for; none when
    disabled (the fit diagnosis is the run's recording: cnnexp/analysis/fit.py). A resumed run
    logs no second step-0 snapshot."""
    if not cfg.enabled:
        return []
    input_shape, every = datamodule.input_shape, cfg.every_n_epochs
    val, names = datamodule.val[0], datamodule.class_names
    images, shown = datamodule.inputs(val[: cfg.n_images]), datamodule.val[1][: cfg.n_images]
    return [
        ReceptiveFieldLogger(input_shape, resumed),
        ERFLogger(every, input_shape, cfg.erf_samples, resumed),
        FeatureMapLogger(every, images, [names[int(y)] for y in shown], cfg, resumed),
        KernelLogger(every, cfg.tile_px, resumed),
        HealthLogger(datamodule.inputs(val[: cfg.health_images])),
        GradCamLogger(every, input_shape, images, shown, names, resumed),
        TopPatchLogger(
            every, input_shape, datamodule.inputs(val[: cfg.patch_images]), cfg, resumed
        ),
        ValidationMistakes(every, datamodule, resumed),
        MistakesLogger(names),
    ]


class ReceptiveFieldLogger(L.Callback):
    """At fit start: artifact `receptive_field.txt` (per layer) and metric `receptive_field`
    (r at the last layer with a map; the input's height where that field covers the input)."""

    def __init__(self, input_shape: tuple[int, int, int], resumed: bool = False) -> None:
        self.input_shape, self.resumed = input_shape, resumed

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.resumed or not trainer.is_global_zero:
            return
        rows = receptive_fields(pl_module.net, self.input_shape)
        client, run_id = trainer.logger.experiment, trainer.logger.run_id
        client.log_text(run_id, format_table(rows) + "\n", "receptive_field.txt")
        trainer.logger.log_metrics({"receptive_field": rf_at_last_spatial_layer(rows)}, step=0)


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
        fig = erf_figure(erf, self.rf_size, title=f"Effective receptive field, {step_words(step)}")
        self.log_image(trainer, figure_pixels(fig), "erf", step)
        trainer.logger.log_metrics({"erf_size": erf_size(erf)}, step=step)


class FeatureMapLogger(SnapshotLogger):
    """Image `feature_maps/convN` per conv block: a row per fixed validation image (labelled with
    its class), the input then up to `max_channels` channels of the block's output (after its
    activation), each column labelled with its channel."""

    def __init__(
        self,
        every: int,
        images: torch.Tensor,
        names: list[str],
        cfg: DictConfig,
        resumed: bool = False,
    ) -> None:
        super().__init__(every, resumed)
        self.images, self.names, self.max_channels = images, names, cfg.max_channels
        self.normalize, self.tile_px = cfg.normalize, cfg.tile_px

    def snapshot(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        x = self.images.to(pl_module.device)
        inputs = [as_input(minmax(image)) for image in self.images.float()]
        for name, maps in block_outputs(pl_module.net, x).items():
            channels, (h, w) = maps.shape[1], maps.shape[-2:]
            maps = maps[:, : self.max_channels].float().cpu()
            if self.normalize == "layer":
                maps = minmax(maps)
            rows = [
                [inputs[i]] + [viridis(minmax(c) if self.normalize == "channel" else c) for c in m]
                for i, m in enumerate(maps)
            ]
            title = (
                f"{name}, {step_words(step)}\n"
                f"rows: class; columns: channel ({maps.shape[1]}/{channels}, {h}×{w})"
            )
            labels = ["input", *map(str, range(maps.shape[1]))]
            grid = TileGrid(rows, self.names, labels, title, lead=1)
            self.log_image(trainer, render_grid(grid, self.tile_px), f"feature_maps/{name}", step)


class KernelLogger(SnapshotLogger):
    """Image `kernels/conv1`: the first conv's filters, each labelled with its channel, zero =
    mid grey, positive lighter, negative darker (RGB when the input is)."""

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
        title = f"{name}, {step_words(step)}\n{w.shape[-2]}×{w.shape[-1]}: grey 0, light +, dark −"
        labels = list(map(str, range(len(w))))
        grid = TileGrid([[as_input(k) for k in w]], [""], labels, title)
        self.log_image(trainer, render_grid(grid, self.tile_px), f"kernels/{name}", step)


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
        fig = gradcam_figure(net, layer, x, y, self.class_names, step_words(step))
        self.log_image(trainer, figure_pixels(fig), "gradcam", step)


class TopPatchLogger(SnapshotLogger):
    """Image `top_patches/convN` per conv block: a row per channel (up to `max_channels`), its
    `top_k` strongest validation patches, strongest first, each cut at the unit's exact
    receptive field (cnnexp/analysis/top_patches.py)."""

    def __init__(
        self,
        every: int,
        input_shape: tuple[int, int, int],
        images: torch.Tensor,
        cfg: DictConfig,
        resumed: bool = False,
    ) -> None:
        super().__init__(every, resumed)
        self.input_shape, self.images = input_shape, images
        self.k, self.max_channels, self.tile_px = cfg.top_k, cfg.max_channels, cfg.tile_px
        self.fields: dict | None = None

    def snapshot(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        net = pl_module.net
        if self.fields is None:
            self.fields = block_fields(net, self.input_shape)
        x = self.images.to(pl_module.device)
        for name, rows in all_top_patches(net, x, self.fields, self.k, self.max_channels).items():
            size = self.fields[name].size
            title = f"{name}, {step_words(step)}\nrows: channel; columns: rank ({size} px)"
            tiles = [[as_input(p) for p in row] for row in rows]
            labels = [f"ch {c}" for c in range(len(rows))]
            grid = TileGrid(tiles, labels, [str(r + 1) for r in range(self.k)], title)
            self.log_image(trainer, render_grid(grid, self.tile_px), f"top_patches/{name}", step)


class HealthLogger(L.Callback):
    """Metrics `health/convN/{mean,std,dead_fraction|saturation,grad_norm}` each epoch: activations
    on fixed validation images (eval mode), gradients of the epoch's last training batch."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images
        self.grad_norms: dict[str, float] = {}

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        last = trainer.fit_loop.epoch_loop.batch_idx + 1 >= trainer.num_training_batches
        if last and trainer.is_global_zero:
            self.grad_norms = grad_norms(pl_module.net)  # the epoch's last batch only: cheap

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        metrics = network_health(pl_module.net, self.images.to(pl_module.device))
        trainer.logger.log_metrics({**metrics, **self.grad_norms}, step=trainer.current_epoch)
