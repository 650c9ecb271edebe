"""Models: block lists from conf/model/ become nn.Modules; Classifier trains them."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf
from torch import nn

from cnnexp.config import check_keys
from cnnexp.models.blocks import ACTIVATIONS, build_net, parse_blocks
from cnnexp.models.classifier import Classifier

__all__ = ["ACTIVATIONS", "Classifier", "build"]
MODEL_KEYS = {"name", "activation", "activation_args", "batch_norm", "blocks", "head"}


def _fields(cfg: DictConfig) -> dict:
    model = OmegaConf.to_container(cfg, resolve=True)
    check_keys(model, "model", MODEL_KEYS)
    return model


def build(cfg: DictConfig, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """The net `cfg.model` describes for `input_shape` (C, H, W); ConfigError if bad."""
    model = _fields(cfg)
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
