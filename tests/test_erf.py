"""Effective receptive fields: the Gaussian limit of Luo et al. 2016, supports, sizes, figures."""

import io

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import nn

from cnnexp.analysis.erf import effective_receptive_field, erf_figure, erf_size, last_spatial_layer
from cnnexp.analysis.receptive_field import receptive_fields

SHAPE = (1, 64, 64)


def uniform_stack(n: int, k: int) -> nn.Sequential:
    """n linear k×k convs with every weight 1/k²: the ERF is the n-fold convolution of a box."""
    net = nn.Sequential(*[nn.Conv2d(1, 1, k, padding=k // 2, bias=False) for _ in range(n)])
    for layer in net:
        nn.init.constant_(layer.weight, 1 / k**2)
    return net


def relu_stack(n: int = 4, width: int = 8) -> nn.Sequential:
    with torch.random.fork_rng():  # a fixed draw, leaving the global generator as it was
        torch.manual_seed(0)
        layers = [nn.Conv2d(3, width, 3, padding=1), nn.ReLU()]
        for _ in range(n - 1):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        return nn.Sequential(*layers)


def theoretical_square(net: nn.Module, shape: tuple[int, int, int]) -> tuple[slice, int]:
    """Input pixels the centre unit of the last layer can see, and the RF size."""
    row = receptive_fields(net, shape)[-1]
    first = row.output_shape[-1] // 2 * row.stride - row.padding
    return slice(max(first, 0), first + row.size), row.size


@pytest.mark.parametrize(("n", "k"), [(10, 3), (5, 5)])
def test_uniform_linear_stack_gives_the_predicted_gaussian(n: int, k: int) -> None:
    erf = effective_receptive_field(uniform_stack(n, k), SHAPE, n_samples=2)
    marginal = erf.sum(axis=0)
    pixels = np.arange(marginal.size)
    mean = (pixels * marginal).sum()
    std = np.sqrt(((pixels - mean) ** 2 * marginal).sum())
    assert std == pytest.approx(np.sqrt(n * (k**2 - 1) / 12), rel=0.1)
    gaussian = np.exp(-((pixels - mean) ** 2) / (2 * std**2))
    assert np.abs(marginal - gaussian / gaussian.sum()).sum() < 0.05  # total variation


@pytest.mark.parametrize(
    ("build", "shape"),
    [(lambda: uniform_stack(10, 3), SHAPE), (relu_stack, (3, 32, 32))],
    ids=["linear", "relu"],
)
def test_erf_is_a_distribution_inside_the_theoretical_field(build, shape: tuple) -> None:
    net = build()
    erf = effective_receptive_field(net, shape, n_samples=8)
    assert erf.shape == shape[1:] and (erf >= 0).all() and erf.sum() == pytest.approx(1)
    square, rf = theoretical_square(net, shape)
    inside = np.zeros_like(erf, dtype=bool)
    inside[square, square] = True
    assert erf[~inside].sum() == 0 and erf[inside].sum() == pytest.approx(1)
    assert erf_size(erf, mass=1.0) <= rf


def test_erf_size_grows_with_depth() -> None:
    sizes = [erf_size(effective_receptive_field(uniform_stack(n, 3), SHAPE, 1)) for n in (2, 6, 12)]
    assert sizes[0] < sizes[1] < sizes[2]


def test_erf_size_by_hand() -> None:
    erf = np.zeros((9, 9))
    erf[2:7, 2:7] = 1 / 25  # a centred 5×5 block
    assert erf_size(erf, mass=1.0) == 5
    assert erf_size(erf, mass=9 / 25) == 3
    assert erf_size(erf, mass=0.37) == 5


def test_relu_net_mode_grads_seed_and_layer_choice() -> None:
    net = relu_stack()
    net.train()
    shape = (3, 32, 32)
    first = effective_receptive_field(net, shape, n_samples=4, seed=1)
    assert net.training and all(p.grad is None for p in net.parameters())
    assert net[3].num_batches_tracked.item() == 0
    with torch.inference_mode():  # as inside Lightning's validation loop
        again = effective_receptive_field(net, shape, n_samples=4, seed=1)
    assert np.array_equal(first, again)
    assert last_spatial_layer(net, shape) == ""  # the whole stack's output
    early = effective_receptive_field(net, shape, n_samples=4, layer="2")  # after two convs
    assert np.count_nonzero(early.sum(axis=0)) <= 5 < np.count_nonzero(first.sum(axis=0))


def test_unknown_layer_is_refused() -> None:
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        effective_receptive_field(uniform_stack(2, 3), SHAPE, layer="nope")


def test_figure_draws_the_theoretical_field() -> None:
    erf = effective_receptive_field(uniform_stack(6, 3), SHAPE, n_samples=1)
    fig = erf_figure(erf, rf_size=13, title="six 3×3")
    assert isinstance(fig, Figure)
    squares = [p for p in fig.axes[0].patches if isinstance(p, Rectangle)]
    assert sorted(p.get_width() for p in squares) == [erf_size(erf), 13]
    png = io.BytesIO()
    fig.savefig(png, format="png")
    assert png.getvalue().startswith(b"\x89PNG")


def test_default_layer_skips_the_classifier_head() -> None:
    net = nn.Sequential(relu_stack(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    assert last_spatial_layer(net, (3, 16, 16)) == "0"
    assert effective_receptive_field(net, (3, 16, 16), n_samples=2).shape == (16, 16)
