"""`python -m cnnexp task=inspect [model=...] [data=...]`: the net layer by layer, untrained.

Per layer: output shape, parameters, forward FLOPs for one image, receptive field (size r,
stride S, padding P); then totals. Nothing trains and nothing goes to MLflow.
`+inspect_model=resnet18` inspects a torchvision classification model (weights=None, 3×224×224).
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig
from torch import nn

from cnnexp import data, models
from cnnexp.analysis.architecture import architecture_figure, model_figure
from cnnexp.analysis.receptive_field import receptive_fields
from cnnexp.config import job_output_dir
from cnnexp.models.facts import flop_counts, flops_per_image, n_params
from cnnexp.models.reference import torchvision_net

TORCHVISION_SHAPE = (3, 224, 224)


@dataclass(frozen=True)
class LayerRow:
    name: str
    op: str
    output_shape: tuple[int, ...]  # without the batch axis
    params: int
    flops: int
    rf: int
    rf_stride: int
    rf_padding: int


def inspect(cfg: DictConfig) -> list[LayerRow]:
    """Print the configured net (or `cfg.inspect_model` from torchvision) and return its rows."""
    name = cfg.get("inspect_model")
    if name:
        net = torchvision_net(name, TORCHVISION_SHAPE, 1000, where="inspect_model")
        input_shape, title = TORCHVISION_SHAPE, f"torchvision {name}"
        picture = architecture_figure(net, input_shape, title=title)
    else:
        info = data.check(cfg.data)
        input_shape = info.input_shape
        net = models.build(cfg.model, input_shape, len(info.class_names))
        title = f"{cfg.model.name} on {cfg.data.name}"
        picture = model_figure(cfg.model, net, input_shape)
    rows = layer_rows(net, input_shape)
    print(f"{title}: input {'x'.join(map(str, input_shape))}\n{format_rows(rows)}")
    flops = flops_per_image(net, input_shape)
    print(f"total: params {n_params(net):,}  FLOPs/image {flops:,} ({flops / 1e6:.2f} M)")
    path = job_output_dir(cfg) / "architecture.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.savefig(path, dpi=110)
    print(f"architecture picture: {path}")
    return rows


def layer_rows(net: nn.Module, input_shape: tuple[int, int, int]) -> list[LayerRow]:
    """One row per op traced by `receptive_fields`, with its module's params and FLOPs."""
    flops = flop_counts(net, input_shape)
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
            rf=row.size,
            rf_stride=row.stride,
            rf_padding=row.padding,
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
            str(r.rf),
            str(r.rf_stride),
            str(r.rf_padding),
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
