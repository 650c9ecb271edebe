"""cnnexp.models.facts.measure_throughput: the median and spread of blocks timed by
torch.utils.benchmark's Timer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnexp.models.facts import measure_throughput


@pytest.mark.parametrize("train", [True, False])
def test_throughput_has_a_median_inside_its_spread(train: bool) -> None:
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))
    measured = measure_throughput(net, torch.randn(16, 1, 8, 8), train, min_run_time=0.05)
    assert 0 < measured.low <= measured.median <= measured.high
    metrics = measured.metrics("throughput_x")
    assert metrics == {
        "throughput_x": measured.median,
        "throughput_x_iqr": measured.high - measured.low,
    }
    assert all(p.grad is None for p in net.parameters())  # measured on a copy


def test_a_step_slower_than_the_timing_budget_still_has_a_spread() -> None:
    """min_run_time shorter than one step: still MIN_REPEATS blocks (one alone has IQR 0)."""
    net = nn.Sequential(nn.Conv2d(1, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3), nn.Flatten())
    measured = measure_throughput(net, torch.randn(64, 1, 32, 32), True, min_run_time=1e-6)
    assert measured.low < measured.high
    assert measured.low <= measured.median <= measured.high
