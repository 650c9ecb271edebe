"""Models: block graphs from conf/model/ (or torchvision classifiers) become nn.Modules;
Classifier trains them."""

from __future__ import annotations

from omegaconf import DictConfig
from torch import nn

from cnnexp.config import plain
from cnnexp.models.blocks import ACTIVATIONS, Plan, build_net, check_activations, plan_net
from cnnexp.models.classifier import Classifier
from cnnexp.models.reference import torchvision_net

__all__ = ["ACTIVATIONS", "Classifier", "build", "plan"]


def plan(cfg: DictConfig, input_shape: tuple[int, int, int]) -> Plan:
    """The checked graph of a `kind: cnn` model for a C×H×W input (ConfigError names the path)."""
    model = plain(cfg)
    check_activations(model["activation"], model["activation_args"])
    return plan_net(
        model["blocks"], input_shape, model["activation"], model["batch_norm"], model["width"]
    )


def build(cfg: DictConfig, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """The net `cfg` (a checked model config) describes for `input_shape` (C, H, W)."""
    if cfg.kind == "torchvision":
        return torchvision_net(cfg.arch, input_shape, num_classes)
    return build_net(plan(cfg, input_shape), num_classes, cfg.head, plain(cfg.activation_args))
