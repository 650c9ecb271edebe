"""The ready studies in conf/experiment/: the jobs each one expands to, and its premise."""

from __future__ import annotations

from itertools import product
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, open_dict
from torch import nn

from cnnexp import models, schema
from cnnexp.analysis.receptive_field import receptive_fields, rf_at_last_spatial_layer
from cnnexp.models.facts import flops_per_image, n_params
from cnnexp.validate import validate
from tests.conftest import CONF, FAST, all_runs, cli_in_process, compose_cfg, store, typed_cfg

ACTIVATIONS = ["tanh", "sigmoid", "relu", "leaky_relu", "rrelu"]
RF_LADDER = ["rf8", "rf12", "rf16", "rf20", "rf24"]
STUDIES = {  # study -> the overrides of each job, in the order Hydra launches them
    "kernel_3x3_vs_5x5": [
        [f"model={m}", f"seed={s}"] for m, s in product(["single5x5", "stacked3x3"], range(3))
    ],
    "bottleneck_1x1": [
        [f"model={m}", f"seed={s}"] for m, s in product(["stacked3x3", "bottleneck1x1"], range(3))
    ],
    "activations": [
        [f"model.activation={a}", f"seed={s}"] for a, s in product(ACTIVATIONS, range(2))
    ],
    "epochs_fit": [[f"trainer.max_epochs={n}"] for n in (2, 5, 10, 20, 40)],
    "receptive_field": [[f"model={m}"] for m in RF_LADDER],
    "orb_vs_cnn": [["model=orb_bovw"], ["model=stacked3x3"]],
    "residual": [
        [f"model={m}", f"model.activation={a}"]
        for m, a in product(["deep", "deep_residual"], ["sigmoid", "relu"])
    ],
    "inception_1x1": [
        [f"model={m}", f"seed={s}"]
        for m, s in product(["inception_small", "inception_no1x1"], range(2))
    ],
    "depthwise": [
        [f"model={m}", f"seed={s}"] for m, s in product(["stacked3x3", "mobilenet_small"], range(2))
    ],
}


def compose_study(name: str, *job: str) -> DictConfig:
    """A study job's config with its `hydra` node, composed as `python -m cnnexp -m` would."""
    schema.register()  # the `_<schema>` configs conf/ builds on, and the resolvers
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", [f"+experiment={name}", *job], return_hydra_config=True)


def study_jobs(name: str) -> list[list[str]]:
    """The jobs Hydra's basic sweeper makes of the study's `hydra.sweeper.params`."""
    params = [f"{k}={v}" for k, v in compose_study(name).hydra.sweeper.params.items()]
    [jobs] = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(params), None)
    return jobs


def validate_job(name: str, job: list[str], tmp_path: Path) -> DictConfig:
    """Run the checks a real job makes before it loads data (they read ${hydra:...} values)."""
    cfg = compose_study(name, *job)
    cfg.hydra.runtime.output_dir = str(tmp_path)
    HydraConfig.instance().set_config(cfg)
    try:
        with open_dict(cfg):
            del cfg["hydra"]
        validate(cfg)
    finally:
        HydraConfig.instance().cfg = None
    return cfg


def net_of(*overrides: str) -> tuple[nn.Module, tuple[int, int, int]]:
    """(net, input shape) of the composed config, without loading data."""
    cfg = typed_cfg(*overrides)
    side = getattr(cfg.data, "image_size", 28)  # the studies use MNIST-5k (28×28) or shapes_pair
    return models.build(cfg.model, (1, side, side), 10), (1, side, side)


def rf(*overrides: str) -> int:
    net, shape = net_of(*overrides)
    return rf_at_last_spatial_layer(receptive_fields(net, shape))


def test_every_study_file_is_listed() -> None:
    assert sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")) == sorted(STUDIES)


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_study_expands_to_its_jobs_and_each_validates(name: str, tmp_path: Path) -> None:
    jobs = study_jobs(name)
    assert jobs == STUDIES[name]
    for job in jobs:
        cfg = validate_job(name, job, tmp_path)
        assert cfg.logger.experiment_name == name  # one MLflow experiment per study
        if name != "orb_vs_cnn":
            net_of(f"+experiment={name}", *job)  # the block list fits the study's data


def test_kernel_study_compares_equal_receptive_fields() -> None:
    study = "+experiment=kernel_3x3_vs_5x5"
    assert rf(study, "model=single5x5") == rf(study, "model=stacked3x3") == 16
    five, three = (net_of(study, f"model={m}")[0] for m in ("single5x5", "stacked3x3"))
    convs = [sum(isinstance(m, nn.Conv2d) for m in net.modules()) for net in (five, three)]
    assert convs == [2, 4]  # per stage two convs and two nonlinearities, single5x5 one


def test_bottleneck_study_keeps_the_receptive_field_and_saves_compute() -> None:
    study = "+experiment=bottleneck_1x1"
    plain, narrow = (net_of(study, f"model={m}") for m in ("stacked3x3", "bottleneck1x1"))
    assert rf(study, "model=stacked3x3") == rf(study, "model=bottleneck1x1")
    assert n_params(narrow[0]) < n_params(plain[0]) / 2
    assert flops_per_image(narrow[0], narrow[1]) < flops_per_image(plain[0], plain[1])


def test_activation_study_runs_a_deep_plain_net() -> None:
    cfg = compose_cfg("+experiment=activations")
    convs = [b for b in cfg.model.blocks if "conv" in b]
    assert cfg.model.name == "deep" and len(convs) == 8 and cfg.model.batch_norm is False
    assert cfg.data.train_size == 2000


def test_epochs_study_only_appends_epochs_and_tests_the_last_weights() -> None:
    cfg = compose_cfg("+experiment=epochs_fit")
    assert not cfg.scheduler  # a constant lr: a longer budget extends the same run
    assert not cfg.callbacks  # no best checkpoint: the test sees the last epoch's weights
    assert cfg.analysis.enabled  # the pictures epoch by epoch, as in every study


def test_receptive_field_ladder_straddles_the_mark_distance() -> None:
    study = "+experiment=receptive_field"
    sizes = [rf(study, f"model={m}") for m in RF_LADDER]
    assert sizes == [int(m.removeprefix("rf")) for m in RF_LADDER]  # each name is its RF
    cfg = compose_cfg(study)
    assert cfg.model.head == "gap"  # a linear head on pooled features cannot compare two marks
    assert sizes[0] < cfg.data.distance < sizes[-1]


@pytest.mark.slow
def test_receptive_field_study_runs_end_to_end_shrunk(out) -> None:
    args = ["-m", "+experiment=receptive_field", "model=rf8,rf24", "data.n_samples=200", *FAST]
    result = cli_in_process(*args, out=out)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(all_runs(out), key=lambda r: r.data.metrics["receptive_field"])
    assert [r.info.run_name for r in runs] == ["rf8-relu-shapes_pair", "rf24-relu-shapes_pair"]
    assert [r.data.metrics["receptive_field"] for r in runs] == [8, 24]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert store(out).get_experiment(runs[0].info.experiment_id).name == "receptive_field"
    assert len({r.data.tags["sweep_id"] for r in runs}) == 1
    assert all(r.data.params["data.distance"] == "16" for r in runs)


def convs(net: nn.Module) -> list[tuple[int, int, int]]:
    """(kernel, in, out channels) of every conv, in order (a residual's projection included)."""
    return [
        (m.kernel_size[0], m.in_channels, m.out_channels)
        for m in net.modules()
        if isinstance(m, nn.Conv2d)
    ]


def test_residual_study_adds_only_shortcuts_to_the_deep_net() -> None:
    study = "+experiment=residual"
    plain, shortcut = (net_of(study, f"model={m}")[0] for m in ("deep", "deep_residual"))
    assert convs(plain) == convs(shortcut)  # same convs, widths, no projection
    assert n_params(plain) == n_params(shortcut)
    assert rf(study, "model=deep") == rf(study, "model=deep_residual")
    assert compose_cfg(study, "model=deep_residual").model.batch_norm is False


def test_inception_study_differs_only_by_the_reductions() -> None:
    study = "+experiment=inception_1x1"
    reduced, full = (net_of(study, f"model={m}") for m in ("inception_small", "inception_no1x1"))
    assert rf(study, "model=inception_small") == rf(study, "model=inception_no1x1")
    reductions = [c for c in convs(reduced[0]) if c not in convs(full[0])]
    assert reductions and {k for k, _, _ in reductions} <= {1, 3, 5}
    assert n_params(reduced[0]) < n_params(full[0]) / 2
    assert flops_per_image(*reduced) < flops_per_image(*full) / 2


def test_depthwise_study_keeps_widths_and_field_and_cuts_weights() -> None:
    study = "+experiment=depthwise"
    dense, separable = (net_of(study, f"model={m}") for m in ("stacked3x3", "mobilenet_small"))
    assert rf(study, "model=stacked3x3") == rf(study, "model=mobilenet_small")
    depthwise = [m for m in separable[0].modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert [m.groups for m in depthwise] == [32, 32, 64]
    assert n_params(separable[0]) < n_params(dense[0]) / 4
    assert flops_per_image(*separable) < flops_per_image(*dense) / 4
