"""Adding a block kind is one class in one file: a kind written in a temporary module (not in
cnnexp/) becomes part of the YAML language, the plan, the net, the layer table with its receptive
fields and the architecture picture, and an unknown kind is one line, never a fallthrough."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from matplotlib.text import Text

from cnnexp import api, models
from cnnexp.analysis.architecture import architecture_figure
from cnnexp.errors import ConfigError
from cnnexp.models.graph import BLOCKS, plan_net
from tests.conftest import typed_cfg

SEPARABLE_KIND = '''
    """A kind no cnnexp module knows: a depthwise-separable conv (k×k per channel, then 1×1)."""
    from dataclasses import dataclass

    from torch import nn

    from cnnexp.errors import ConfigError
    from cnnexp.limits import setting
    from cnnexp.models.graph import Block, Node, block_kind


    @block_kind
    @dataclass(frozen=True)
    class Separable(Block):  # {separable: 5, channels: 8}
        separable: int = setting(ge=1, le=7)  # kernel size
        channels: int = setting(ge=1)

        prefix, colour, convolves = "sep", "#eeddff", True

        @classmethod
        def parse(cls, raw, where, depth):
            block = super().parse(raw, where, depth)
            if block.separable % 2 == 0:
                raise ConfigError(f"{where}.separable: {block.separable} is even (allowed: odd)")
            return block

        def plan(self, where, shape, ctx):
            out = (self.channels, *shape[1:])
            return [Node(where, ctx.name(self), self, shape, out)]

        def module(self, node, args):
            c = node.in_shape[0]
            k = self.separable
            return nn.Sequential(
                nn.Conv2d(c, c, k, padding=k // 2, groups=c),
                nn.Conv2d(c, self.channels, 1),
                nn.ReLU(),
            )

        def describe(self, node):
            return f"{node.name}  {self.separable}×{self.separable} separable, {self.channels} ch"
'''
BLOCKS_WITH_IT = (
    "model.blocks=[{conv: 3, channels: 4},{separable: 5, channels: 6},{conv: 1, channels: 4}]"
)


@pytest.fixture
def separable_kind(tmp_path: Path):
    """The kind's module imported from a temporary file; unregistered afterwards."""
    path = tmp_path / "separable_kind.py"
    path.write_text(textwrap.dedent(SEPARABLE_KIND))
    spec = importlib.util.spec_from_file_location("separable_kind", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["separable_kind"] = module
    spec.loader.exec_module(module)
    yield module.Separable
    BLOCKS.pop("separable", None)
    sys.modules.pop("separable_kind", None)


def test_an_unknown_kind_is_one_line_naming_the_block() -> None:
    assert "separable" not in BLOCKS
    with pytest.raises(ConfigError, match=r"^model\.blocks\[1\]: .* must have exactly one of conv"):
        typed_cfg("data=digits", BLOCKS_WITH_IT)


def test_a_kind_in_its_own_module_is_parsed_planned_built_and_measured(
    separable_kind, tmp_path: Path
) -> None:
    conf = typed_cfg("data=digits", BLOCKS_WITH_IT)
    assert isinstance(conf.model.blocks[1], separable_kind)
    net = models.build(conf.model, (1, 8, 8), 10)
    assert net(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    names = [name for name, _ in net.named_modules()]
    assert any(name.endswith("sep1") for name in names), names

    table = api.inspect(["data=digits", BLOCKS_WITH_IT, f"paths.output_dir={tmp_path}"])
    # rows are modules (features.sep1.0, features.sep1.1, ...): a block's output is its last row
    last = {}
    for row in table.rows:
        if row.name.startswith("features."):
            last[row.name.split(".")[1]] = row
    assert last["sep1"].output_shape == (6, 8, 8)
    # the field is traced through the modules, not written per kind: 3, then + 5 - 1, then 1×1
    assert [last[n].rf for n in ("conv1", "sep1", "conv2")] == [3, 7, 7]
    assert table.params == sum(
        p.numel() for p in models.build(conf.model, (1, 8, 8), 10).parameters()
    )
    # the architecture picture draws the kind's own box
    plan = plan_net(conf.model.blocks, (1, 8, 8))
    figure = architecture_figure(net, (1, 8, 8), plan, "separable")
    texts = [t.get_text() for t in figure.findobj(Text)]
    assert "sep1  5×5 separable, 6 ch" in texts, texts


def test_its_bounds_are_its_fields_settings(separable_kind) -> None:
    with pytest.raises(ConfigError, match=r"^model\.blocks\[1\]\.separable: 9 is not allowed"):
        typed_cfg("data=digits", BLOCKS_WITH_IT.replace("separable: 5", "separable: 9"))
    with pytest.raises(ConfigError, match=r"^model\.blocks\[1\]\.separable: 4 is even"):
        typed_cfg("data=digits", BLOCKS_WITH_IT.replace("separable: 5", "separable: 4"))
