"""task=inspect: the layer table untrained; single5x5 vs stacked3x3 fields and weights."""

from __future__ import annotations

import pytest
import torch
import torchvision.models as tvm

from cnnexp import api
from cnnexp.layers import format_rows, inspect, layer_rows
from tests.conftest import cli_in_process


def conv_rows(preset: str, tmp_path, *overrides: str) -> dict:
    """The conv rows of `task=inspect` composed as a CLI job (HydraConfig set while it runs)."""
    args = ["task=inspect", f"model={preset}", "data=mnist5k", f"paths.output_dir={tmp_path}"]
    with api.job([*args, *overrides]) as cfg:
        return {r.name: r for r in inspect(cfg) if r.op == "Conv2d"}


def test_stacked3x3_reaches_the_5x5_field_with_fewer_weights(tmp_path, capsys) -> None:
    single = conv_rows("single5x5", tmp_path)
    stacked = conv_rows("stacked3x3", tmp_path)
    assert "features.conv1.conv" in capsys.readouterr().out
    for single_conv, pair_end in [("conv1", "conv2"), ("conv2", "conv4")]:  # end of each stage
        assert single[f"features.{single_conv}.conv"].rf == stacked[f"features.{pair_end}.conv"].rf
    assert [r.rf for r in single.values()] == [5, 14]
    # conv4 (C -> C, 3x3) and two of them replacing one 5x5 C -> C: 18 C^2 vs 25 C^2
    c = 64
    assert stacked["features.conv4.conv"].params == 9 * c * c
    assert single["features.conv2.conv"].params == 25 * 32 * c  # its input has 32 channels


def test_same_width_stages_give_18_vs_25_c_squared(tmp_path) -> None:
    c = 16
    blocks = f"[{{conv:3,channels:{c}}},{{conv:5,channels:{c}}},{{pool:max}}]"
    pair = f"[{{conv:3,channels:{c}}},{{conv:3,channels:{c}}},{{conv:3,channels:{c}}},{{pool:max}}]"
    single = conv_rows("single5x5", tmp_path, f"model.blocks={blocks}")
    stacked = conv_rows("stacked3x3", tmp_path, f"model.blocks={pair}")
    assert single["features.conv2.conv"].params == 25 * c * c
    replaced = stacked["features.conv2.conv"].params + stacked["features.conv3.conv"].params
    assert replaced == 18 * c * c
    assert single["features.conv2.conv"].rf == stacked["features.conv3.conv"].rf == 7


def table_lines(name: str, shape: tuple[int, int, int], **kwargs) -> dict[str, list[str]]:
    """format_rows of a torchvision model built on the meta device: {layer: its cells}."""
    with torch.device("meta"):
        net = getattr(tvm, name)(weights=None, **kwargs)
    lines = format_rows(layer_rows(net, shape, flops={})).splitlines()[1:]
    return {line.split()[0]: line.split() for line in lines}


def test_table_shows_height_by_width_and_whole_fields() -> None:
    inception = table_lines("inception_v3", (3, 299, 299), init_weights=False)
    assert inception["Mixed_6b.branch7x7dbl_4.conv"][-3:] == ["351x255", "16", "154x106"]
    assert inception["fc"][-3:] == ["whole", "-", "-"]
    vit = table_lines("vit_b_16", (3, 224, 224))
    block = "encoder.layers.encoder_layer_0"
    assert vit[f"{block}.ln_1"][-3:] == ["16", "16", "0"]  # a token sees its 16×16 patch
    assert vit[f"{block}.self_attention"][-3:] == ["whole", "-", "-"]


@pytest.mark.slow
def test_cli_inspects_a_torchvision_model_without_a_run(out) -> None:
    result = cli_in_process("task=inspect", "+inspect_model=resnet18", out=out)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "layer4.1.conv2" in result.stdout and "params 11,689,512" in result.stdout
    assert not (out / "mlflow.db").exists()
