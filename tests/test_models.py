"""Every model preset x every offline data set trains a step; block lists are validated."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnexp import data, models
from cnnexp.config import ConfigError
from cnnexp.models.blocks import build_net, out_size, parse_blocks
from cnnexp.models.facts import flops_per_image, n_params
from tests.conftest import CONF, compose_cfg

PRESETS = sorted(
    p.stem
    for p in (CONF / "model").glob("[!_]*.yaml")  # CNNs: block lists
    if "blocks:" in p.read_text()
)
OFFLINE = ["mnist5k", "digits", "shapes"]


@pytest.mark.parametrize("data_name", OFFLINE)
@pytest.mark.parametrize("preset", PRESETS)
def test_preset_forward_backward(preset: str, data_name: str, tmp_path) -> None:
    cfg = compose_cfg(f"model={preset}", f"data={data_name}", f"paths.output_dir={tmp_path}")
    dm = data.build(cfg.data)
    net = models.build(cfg.model, dm.input_shape, dm.num_classes)
    x, y = dm.train[0][:16], dm.train[1][:16]
    logits = net(x)
    assert logits.shape == (16, dm.num_classes)
    assert torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, y).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} got a zero gradient"


@pytest.mark.parametrize("activation", sorted(models.ACTIVATIONS))
def test_every_activation_builds_with_its_args(activation: str) -> None:
    cfg = compose_cfg("model=tiny", f"model.activation={activation}")
    net = models.build(cfg.model, (1, 28, 28), 10)
    assert type(net.features.conv1.act) is models.ACTIVATIONS[activation]


def test_leaky_relu_slope_comes_from_config() -> None:
    cfg = compose_cfg(
        "model=tiny",
        "model.activation=leaky_relu",
        "model.activation_args.leaky_relu.negative_slope=0.2",
    )
    assert models.build(cfg.model, (1, 28, 28), 10).features.conv1.act.negative_slope == 0.2


def test_facts_count_params_and_flops() -> None:
    net = build_net(
        parse_blocks([{"conv": 3, "channels": 4, "batch_norm": False}], (8, 8)),
        1,
        2,
        "relu",
        None,
        "gap",
        (8, 8),
    )
    assert n_params(net) == (9 * 4 + 4) + (4 * 2 + 2)
    # 2 FLOPs per MAC: conv 8*8*4*9 MACs, linear 4*2 MACs
    assert flops_per_image(net, (1, 8, 8)) == 2 * (8 * 8 * 4 * 9 + 4 * 2)


BAD_BLOCKS = [
    ([{"conv": 0, "channels": 8}], "model.blocks[0].conv: 0 is not allowed"),
    ([{"conv": 4, "channels": 8}], "kernel 4 is even"),
    ([{"conv": 3, "channels": 0}], "model.blocks[0].channels: 0 is not allowed"),
    ([{"conv": 3}], "model.blocks[0].channels: missing"),
    ([{"conv": 3, "channels": 8, "kernel": 3}], "model.blocks[0].kernel: unknown key"),
    ([{"pool": "median"}], "model.blocks[0].pool: 'median' is not allowed .allowed: max, avg."),
    ([{"dropout": 1.5}], "model.blocks[0].dropout"),
    ([{"conv": 3, "channels": 4}, *[{"pool": "max"}] * 4], "model.blocks[4]"),
    ([{"conv": 3, "channels": 4, "padding": -1}], "model.blocks[0].padding"),
    ([{"pool": "max"}], "no conv block"),
]


@pytest.mark.parametrize(("blocks", "message"), BAD_BLOCKS)
def test_bad_block_lists_name_the_block(blocks: list, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_blocks(blocks, (8, 8))


conv_blocks = st.builds(
    lambda k, c, s, d, same: {
        "conv": k,
        "channels": c,
        "stride": 1 if same else s,
        "dilation": d,
        "padding": "same" if same else 0,
    },
    st.sampled_from([1, 3, 5, 7]),
    st.integers(1, 4),
    st.integers(1, 3),
    st.integers(1, 2),
    st.booleans(),
)
pool_blocks = st.builds(
    lambda kind, size: {"pool": kind, "size": size},
    st.sampled_from(["max", "avg"]),
    st.integers(1, 3),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(conv_blocks, pool_blocks), min_size=1, max_size=6), st.integers(4, 24))
def test_validation_agrees_with_torch(raw: list, side: int) -> None:
    """A block list is rejected exactly when torch could not run it; else shapes match."""
    predicted, h = [], side
    for block in parse_blocks_lenient(raw):
        h = out_size(block, h)
        predicted.append(h)
    try:
        blocks = parse_blocks(raw, (side, side))
    except ConfigError as err:
        assert min(predicted) < 1 or "no conv block" in str(err)
        return
    net = build_net(blocks, 1, 3, "relu", None, "flatten", (side, side))
    features = net.features(torch.zeros(2, 1, side, side))
    assert features.shape[-1] == predicted[-1] >= 1


def parse_blocks_lenient(raw: list) -> list:
    from cnnexp.models.blocks import parse_block

    return [parse_block(b, "b", True) for b in raw]
