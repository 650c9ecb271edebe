"""Every model preset x every offline data set trains a step; block lists are validated."""

from __future__ import annotations

import pytest
import torch

from cnnexp import data, models
from cnnexp.models.facts import flops_per_image, n_params
from cnnexp.models.graph import build_net, parse_blocks, plan_net
from cnnexp.schema import ACTIVATIONS
from tests.conftest import CONF, block_shapes, typed_cfg

PRESETS = sorted(
    p.stem
    for p in (CONF / "model").glob("[!_]*.yaml")  # CNNs: block lists
    if "blocks:" in p.read_text()
)
OFFLINE = ["mnist5k", "digits", "shapes"]


@pytest.mark.parametrize("data_name", OFFLINE)
@pytest.mark.parametrize("preset", PRESETS)
def test_preset_forward_backward(preset: str, data_name: str, tmp_path) -> None:
    cfg = typed_cfg(f"model={preset}", f"data={data_name}", f"paths.output_dir={tmp_path}")
    dm = data.build(cfg.data)
    net = models.build(cfg.model, dm.input_shape, dm.num_classes)
    x, y = dm.inputs(dm.train[0][:16]), dm.train[1][:16]
    plan = models.kind(cfg.model).plan(cfg.model, dm.input_shape)
    predicted = {node.name: node.out_shape for node in plan.walk()}
    seen, logits = block_shapes(net, predicted, x)
    assert seen == predicted
    assert logits.shape == (16, dm.num_classes)
    assert torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, y).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} got a zero gradient"


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_every_activation_builds_with_its_args(activation: str) -> None:
    cfg = typed_cfg("model=tiny", f"model.activation={activation}")
    net = models.build(cfg.model, (1, 28, 28), 10)
    assert type(net.features.conv1.act).__name__ == ACTIVATIONS[activation]


def test_leaky_relu_slope_comes_from_config() -> None:
    cfg = typed_cfg(
        "model=tiny",
        "model.activation=leaky_relu",
        "model.activation_args.leaky_relu.negative_slope=0.2",
    )
    assert models.build(cfg.model, (1, 28, 28), 10).features.conv1.act.negative_slope == 0.2


def test_facts_count_params_and_flops() -> None:
    net = build_net(
        plan_net(parse_blocks([{"conv": 3, "channels": 4, "batch_norm": False}]), (1, 8, 8)),
        2,
        "gap",
        None,
    )
    assert n_params(net) == (9 * 4 + 4) + (4 * 2 + 2)
    # 2 FLOPs per MAC: conv 8*8*4*9 MACs, linear 4*2 MACs
    assert flops_per_image(net, (1, 8, 8)) == 2 * (8 * 8 * 4 * 9 + 4 * 2)
