"""Models: block lists from conf/model/ become nn.Modules; Classifier trains them."""

from __future__ import annotations

from omegaconf import DictConfig
from torch import nn

from cnnexp.config import plain
from cnnexp.models.blocks import ACTIVATIONS, build_net, check_activations, parse_blocks
from cnnexp.models.classifier import Classifier

__all__ = ["ACTIVATIONS", "Classifier", "build"]


def build(cfg: DictConfig, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """The net `cfg.model` (a checked CnnModelConf) describes for `input_shape` (C, H, W);
    ConfigError, naming the block's path, if the blocks do not fit the input."""
    model = plain(cfg)
    check_activations(model["activation"], model["activation_args"])
    blocks = parse_blocks(model["blocks"], input_shape[1:], model["batch_norm"])
    return build_net(
        blocks,
        input_shape[0],
        num_classes,
        model["activation"],
        model["activation_args"].get(model["activation"]),
        model["head"],
        input_shape[1:],
    )
