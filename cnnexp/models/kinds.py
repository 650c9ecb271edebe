"""The kinds of model a config can name, one class each, chosen by the type of the `model`
section (its schema in cnnexp/schema.py), never by testing its name: a block graph written in
YAML, a torchvision classifier, or the hand-crafted ORB baseline (no net: fitted by
cnnexp/features, not by Lightning)."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from cnnexp.features.orb import orb_settings
from cnnexp.models.blocks import Conv, check_activation_args
from cnnexp.models.graph import Plan, build_net, plan_net
from cnnexp.models.reference import torchvision_net
from cnnexp.schema import CnnModelConf, OrbModelConf, TorchvisionModelConf

Shape = tuple[int, int, int]


class ModelKind:
    trains: ClassVar[bool] = True  # a net trained by Lightning

    def check(self, model: Any, input_shape: Shape) -> None:
        """What only this kind checks, before anything is built (ConfigError names the key)."""

    def build(self, model: Any, input_shape: Shape, num_classes: int) -> nn.Module:
        raise NotImplementedError

    def plan(self, model: Any, input_shape: Shape) -> Plan | None:
        """The block graph, for a kind written as one (the architecture picture draws it)."""
        return None

    def size_key(self, model: Any, input_shape: Shape) -> str:
        """The key that makes the net as large as it is."""
        raise NotImplementedError


class BlockGraph(ModelKind):
    def check(self, model: CnnModelConf, input_shape: Shape) -> None:
        check_activation_args(model.activation_args)
        self.plan(model, input_shape)

    def plan(self, model: CnnModelConf, input_shape: Shape) -> Plan:
        return plan_net(model.blocks, input_shape, model.activation, model.batch_norm, model.width)

    def build(self, model: CnnModelConf, input_shape: Shape, num_classes: int) -> nn.Module:
        plan = self.plan(model, input_shape)
        return build_net(plan, num_classes, model.head, model.activation_args)

    def size_key(self, model: CnnModelConf, input_shape: Shape) -> str:
        if model.width > 1:
            return "model.width"
        convs = [n for n in self.plan(model, input_shape).walk() if isinstance(n.block, Conv)]
        return f"{max(convs, key=lambda n: n.block.channels).path}.channels"


class Torchvision(ModelKind):
    def build(self, model: TorchvisionModelConf, input_shape: Shape, num_classes: int) -> nn.Module:
        return torchvision_net(model.arch, input_shape, num_classes)

    def size_key(self, model: TorchvisionModelConf, input_shape: Shape) -> str:
        return "model.arch"


class OrbBaseline(ModelKind):
    trains = False

    def check(self, model: OrbModelConf, input_shape: Shape) -> None:
        orb_settings(model.orb, input_shape[1:])


KINDS: dict[type, ModelKind] = {
    CnnModelConf: BlockGraph(),
    TorchvisionModelConf: Torchvision(),
    OrbModelConf: OrbBaseline(),
}


def kind(model: Any) -> ModelKind:
    """The kind of the typed `model` section."""
    return KINDS[type(model)]
