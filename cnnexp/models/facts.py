"""Model facts logged with every run: parameter count, FLOPs per image, measured throughput."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from cnnexp.models.modules import eval_mode, module_device


def n_params(net: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def flop_counts(net: nn.Module, input_shape: tuple[int, int, int]) -> dict[str, int]:
    """Forward FLOPs for one image per module name ("Global" = total), torch's FlopCounterMode
    convention: 2 FLOPs per multiply-accumulate of convolutions and matmuls, attention included;
    activations, pooling, normalisation and additions count 0. One forward pass in eval mode
    without gradients: `net` is left as it was."""
    counter = FlopCounterMode(display=False, custom_mapping=_FUSED_ATTENTION)
    with eval_mode(net), torch.no_grad(), _unfused_multihead_attention(), counter:
        net(torch.zeros(1, *input_shape, device=module_device(net)))
    return {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}


def _sdpa_flops(
    query: torch.Size, key: torch.Size, value: torch.Size, *_: object, **__: object
) -> int:
    return sdpa_flop_count(query, key, value)  # FlopCounterMode passes the tensors' shapes


# scaled_dot_product_attention kernels torch's counter has no formula for (it has the CUDA ones):
# without these a ViT on the CPU counts 0 for Q·Kᵀ and attention·V (17.56 G MACs read 16.85)
_FUSED_ATTENTION = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops,
    torch.ops.aten._scaled_dot_product_attention_math_for_mps: _sdpa_flops,
    torch.ops.aten._scaled_dot_product_fused_attention_overrideable: _sdpa_flops,
}


@contextmanager
def _unfused_multihead_attention() -> Iterator[None]:
    """Without gradients, nn.MultiheadAttention and nn.TransformerEncoderLayer run one fused
    kernel (_native_multi_head_attention) that FlopCounterMode cannot see into: a ViT counted 0
    for every attention block (22.5 of 35.1 GFLOPs). Their switch (process-wide) turns it off
    for the count. Enabling gradients instead would miss nets with frozen weights."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


def flops_per_image(net: nn.Module, input_shape: tuple[int, int, int]) -> int:
    return flop_counts(net, input_shape).get("Global", 0)


@dataclass(frozen=True)
class Throughput:
    """Images per second: the median call and the spread of the middle half of the blocks."""

    median: float
    low: float  # at the 75th percentile of the time per call
    high: float  # at the 25th percentile

    def metrics(self, name: str) -> dict[str, float]:
        """{name: median, name_iqr: high - low}: the run metrics of one measurement."""
        return {name: self.median, f"{name}_iqr": self.high - self.low}


MIN_REPEATS = 5  # timed blocks at least, so the median has a spread around it


def measure_throughput(
    net: nn.Module, batch: torch.Tensor, train: bool, min_run_time: float = 0.2
) -> Throughput:
    """Images per second through `net` on one batch: forward + backward in train mode (`train`)
    or forward only in eval mode, on the net's device, timed by torch.utils.benchmark's Timer (it
    synchronises the accelerator) after one warm-up step, in blocks of steps for about
    `min_run_time` seconds, at least MIN_REPEATS blocks however long a step takes.
    Runs on a copy: `net` stays untouched."""
    net = copy.deepcopy(net).train(train)
    x = batch.to(module_device(net))
    target = torch.zeros(len(x), dtype=torch.long, device=x.device)

    def step() -> None:
        if train:
            F.cross_entropy(net(x), target).backward()
        else:
            with torch.no_grad():
                net(x)

    step()
    timer = benchmark_timer()("step()", globals={"step": step}, num_threads=torch.get_num_threads())
    once = timer.timeit(1).times[0]
    # Blocks of about min_run_time / MIN_REPEATS each: Timer.blocked_autorange sized one block of
    # a 2 ms step at 1,000 steps (2.6 s, one block, no spread) where 0.2 s was asked for.
    number = max(1, round(min_run_time / MIN_REPEATS / once))
    times: list[float] = []  # seconds per step, one per block
    while len(times) < MIN_REPEATS or sum(times) * number < min_run_time:
        times += timer.timeit(number).times
    quartiles = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)  # as Measurement.median
    p25, median, p75 = torch.tensor(times, dtype=torch.float64).quantile(quartiles)
    return Throughput(*(len(x) / float(t) for t in (median, p75, p25)))


def benchmark_timer() -> type:
    """torch.utils.benchmark.Timer. Its import loads torch.utils.cpp_extension, which warns on
    stderr where CUDA_HOME exists without a CUDA runtime; we compile nothing, so it stays quiet."""
    quiet = logging.getLogger("torch.utils.cpp_extension")
    level, quiet.level = quiet.level, logging.ERROR
    try:
        from torch.utils.benchmark import Timer
    finally:
        quiet.level = level
    return Timer
