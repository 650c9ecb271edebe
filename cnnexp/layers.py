"""`python -m cnnexp task=inspect [model=...] [data=...]`: the net layer by layer, untrained.

Per layer: output shape, parameters, forward FLOPs for one image, receptive field (size r,
stride S, padding P: HxW where height and width differ, `whole` where the field covers the
input); then totals. Nothing trains and nothing goes to MLflow.
`+inspect_model=resnet18` inspects a torchvision classification model (weights=None, 3×224×224).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig
from torch import nn

from cnnexp import data, models
from cnnexp.analysis.architecture import architecture_figure, model_figure
from cnnexp.analysis.receptive_field import RFRow, field_cells, receptive_fields
from cnnexp.data.sources import free_memory
from cnnexp.models.facts import flop_counts, n_params
from cnnexp.models.footprint import footprint, meta_net
from cnnexp.models.reference import torchvision_net
from cnnexp.paths import job_output_dir
from cnnexp.probes import fits
from cnnexp.typed import typed_config

TORCHVISION_SHAPE = (3, 224, 224)


@dataclass(frozen=True)
class LayerRow:
    name: str
    op: str
    output_shape: tuple[int, ...]  # without the batch axis
    params: int
    flops: int
    field: RFRow  # the receptive field at the layer's output

    @property
    def rf(self) -> int:  # r along the height
        return self.field.size


@dataclass(frozen=True)
class LayerTable:
    """The net layer by layer with its totals; str() is what task=inspect prints."""

    title: str
    input_shape: tuple[int, ...]
    rows: list[LayerRow]
    params: int
    flops: int  # forward, one image
    picture: Path | None = None  # architecture.png (task=inspect)

    def __str__(self) -> str:
        flops = f"{self.flops:,} ({self.flops / 1e6:.2f} M)"
        saved = f"\narchitecture picture: {self.picture}" if self.picture else ""
        return (
            f"{self.title}: input {'x'.join(map(str, self.input_shape))}\n"
            f"{format_rows(self.rows)}\n"
            f"total: params {self.params:,}  FLOPs/image {flops}{saved}"
        )


def inspect(cfg: DictConfig) -> list[LayerRow]:
    """Print the configured net (or `inspect_model` from torchvision) and return its rows."""
    table = layer_table(cfg)
    print(table)
    return table.rows


def layer_table(cfg: DictConfig) -> LayerTable:
    """The table of the configured net (or `inspect_model`); its picture saved to the job's
    output dir. The net is checked as a training's is, and must fit this machine's memory."""
    conf = typed_config(cfg)
    if conf.inspect_model:
        net = torchvision_net(conf.inspect_model, TORCHVISION_SHAPE, 1000, where="inspect_model")
        input_shape, title = TORCHVISION_SHAPE, f"torchvision {conf.inspect_model}"
        picture = architecture_figure(net, input_shape, title=title)
    else:
        info = data.check(conf.data)
        input_shape, classes = info.input_shape, len(info.class_names)
        models.kind(conf.model).check(conf.model, input_shape)
        need = footprint(meta_net(conf.model, input_shape, classes), input_shape)
        fits(need, conf.model, input_shape, 1, free_memory(), "this machine's memory")
        net = models.build(conf.model, input_shape, classes)
        title = f"{conf.model.name} on {conf.data.name}"
        picture = model_figure(conf.model, net, input_shape)
    path = job_output_dir(conf) / "architecture.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.savefig(path, dpi=110)
    return net_table(title, net, input_shape, path)


def net_table(
    title: str, net: nn.Module, input_shape: tuple[int, int, int], picture: Path | None = None
) -> LayerTable:
    """The table of `net` (also the model summary a training run prints)."""
    flops = flop_counts(net, input_shape)  # once: per layer, and "Global" for the total
    rows = layer_rows(net, input_shape, flops)
    return LayerTable(title, input_shape, rows, n_params(net), flops.get("Global", 0), picture)


def layer_rows(
    net: nn.Module, input_shape: tuple[int, int, int], flops: dict[str, int]
) -> list[LayerRow]:
    """One row per op traced by `receptive_fields`, with its module's params and FLOPs
    (`flops`: the net's flop_counts)."""
    prefix = type(net).__name__  # FlopCounterMode names modules "<RootClass>.<qualified name>"
    modules = dict(net.named_modules())
    return [
        LayerRow(
            name=row.name,
            op=row.op,
            output_shape=row.output_shape[1:],
            params=sum(p.numel() for p in modules[row.name].parameters())
            if row.name in modules
            else 0,
            flops=flops.get(f"{prefix}.{row.name}", 0),
            field=row,
        )
        for row in receptive_fields(net, input_shape)
    ]


def format_rows(rows: list[LayerRow]) -> str:
    header = ("layer", "op", "output", "params", "FLOPs", "RF r", "S", "P")
    lines = [header] + [
        (
            r.name,
            r.op,
            "x".join(map(str, r.output_shape)),
            f"{r.params:,}",
            f"{r.flops:,}",
            *field_cells(r.field),
        )
        for r in rows
    ]
    widths = [max(map(len, column)) for column in zip(*lines, strict=True)]
    return "\n".join(
        "  ".join(
            c.ljust(w) if i < 3 else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in lines
    )
