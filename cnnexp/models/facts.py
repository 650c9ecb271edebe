"""Model facts logged with every run: parameter count, FLOPs per image, measured throughput."""

from __future__ import annotations

import copy
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cnnexp.analysis.receptive_field import eval_mode, module_device


def n_params(net: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def flop_counts(net: nn.Module, input_shape: tuple[int, int, int]) -> dict[str, int]:
    """Forward FLOPs for one image per module name ("Global" = total), torch's FlopCounterMode
    convention: 2 FLOPs per multiply-accumulate of convolutions and matmuls; activations,
    pooling, normalisation and additions count 0."""
    counter = FlopCounterMode(display=False)
    with eval_mode(net), torch.no_grad(), counter:
        net(torch.zeros(1, *input_shape, device=module_device(net)))
    return {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}


def flops_per_image(net: nn.Module, input_shape: tuple[int, int, int]) -> int:
    return flop_counts(net, input_shape).get("Global", 0)


def throughput(net: nn.Module, batch: torch.Tensor, train: bool, seconds: float = 0.3) -> float:
    """Images per second through `net` on one batch: forward + backward in train mode (`train`)
    or forward only in eval mode, on the net's device; the median of repeated steps (at least 5,
    for about `seconds`) after two warm-up steps. Runs on a copy: `net` stays untouched."""
    net = copy.deepcopy(net).train(train)
    x = batch.to(module_device(net))
    target = torch.zeros(len(x), dtype=torch.long, device=x.device)
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)

    def step() -> float:
        start = time.perf_counter()
        if train:
            F.cross_entropy(net(x), target).backward()
        else:
            with torch.no_grad():
                net(x)
        sync()
        return time.perf_counter() - start

    step(), step()
    times, end = [], time.perf_counter() + seconds
    while len(times) < 5 or (time.perf_counter() < end and len(times) < 200):
        times.append(step())
    return len(x) / statistics.median(times)
