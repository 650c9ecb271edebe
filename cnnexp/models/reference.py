"""Reference nets by name: any torchvision classifier, randomly initialised (no download), its
first conv adapted to the data's channels and its classifier to the class count."""

from __future__ import annotations

import torch
from torch import nn

from cnnexp.errors import ConfigError
from cnnexp.limits import one_of
from cnnexp.models.modules import eval_mode

NO_AUX = ("googlenet", "inception_v3")  # auxiliary heads only make sense with their own loss


def classifier_names() -> list[str]:
    from torchvision import models as tv

    return tv.list_models(module=tv)  # the classification models only


def torchvision_net(
    arch: str, input_shape: tuple[int, int, int], num_classes: int, where: str = "model.arch"
) -> nn.Module:
    """torchvision's `arch` for C×H×W inputs and `num_classes`; ConfigError when the arch cannot
    take that input (probed with one forward pass in eval mode)."""
    from torchvision import models as tv

    one_of(arch, where, classifier_names())
    kwargs = {"aux_logits": False, "init_weights": True} if arch in NO_AUX else {}
    net = tv.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
    _adapt_first_conv(net, input_shape[0])
    try:
        with eval_mode(net), torch.no_grad():
            net(torch.zeros(1, *input_shape))
    except Exception as err:  # shape checks of many kinds: RuntimeError, AssertionError, …
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        shape = "x".join(map(str, input_shape))
        raise ConfigError(f"{where}: {arch} cannot take {shape} inputs ({text})") from None
    return net


def _adapt_first_conv(net: nn.Module, channels: int) -> None:
    """Replace the first Conv2d by one reading `channels` input channels (fresh weights)."""
    name, conv = next((n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d))
    if conv.in_channels == channels:
        return
    parent = net.get_submodule(name.rpartition(".")[0])
    new = nn.Conv2d(
        channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        groups=1,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    setattr(parent, name.rpartition(".")[2], new)
