"""model=orb_bovw end to end: it lands in MLflow like a CNN run; bad settings open no run."""

from __future__ import annotations

import pytest

from cnnexp.errors import ConfigError
from cnnexp.features.orb import orb_settings
from cnnexp.validate import validate
from tests.conftest import all_runs, cli_in_process, error_lines, store, typed_cfg

ORB_METRICS = [
    "val_acc",
    "test_acc",
    "train_acc",
    "keypoints_per_image",
    "no_keypoint_fraction",
    "fit_seconds",
    "predict_seconds",
    "good_matches_crosscheck",
    "good_matches_ratio",
]


def test_orb_bovw_config_composes_with_its_run_name() -> None:
    cfg = typed_cfg("model=orb_bovw")
    assert cfg.logger.run_name == "orb_bovw-orb-mnist5k"
    assert orb_settings(cfg.model.orb, (28, 28)).upscale == 4


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.orb.upscale=1", "model.orb.upscale=1: "),
        ("model.orb.patch_size=1", "model.orb.patch_size: 1 is not allowed"),
        (
            "+model.orb.nfeatures=9",
            "model.orb.nfeatures: unknown key .did you mean model.orb.n_features",
        ),
        ("model.vocab_size=1", "model.vocab_size: 1 is not allowed"),
    ],
)
def test_bad_orb_settings_name_the_key(override, message, compose_job) -> None:
    with pytest.raises(ConfigError, match=message):
        validate(compose_job("model=orb_bovw", override))


@pytest.mark.slow
def test_orb_run_lands_finished_with_metrics_and_figures(out) -> None:
    result = cli_in_process("model=orb_bovw", "data.train_size=1000", out=out)
    assert result.returncode == 0, result.stderr[-3000:]
    [run] = all_runs(out)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "orb_bovw-orb-mnist5k"
    metrics = run.data.metrics
    assert set(ORB_METRICS) <= set(metrics), metrics
    assert metrics["val_acc"] > 0.3 and metrics["test_acc"] > 0.3
    assert metrics["keypoints_per_image"] > 0 and metrics["no_keypoint_fraction"] < 0.5
    assert run.data.params["model.orb.upscale"] == "4"
    client = store(out)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "config.yaml" in artifacts
    figures = {a.path for a in client.list_artifacts(run.info.run_id, "orb")}
    assert figures == {"orb/keypoints.png", "orb/matches.png"}
    assert "val_acc" in result.stdout and run.info.run_id in result.stdout


@pytest.mark.slow
def test_bad_orb_setting_gives_one_line_and_opens_no_run(out) -> None:
    result = cli_in_process("model=orb_bovw", "model.orb.patch_size=1", out=out)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    ours = error_lines(result.stderr)
    assert len(ours) == 1 and "model.orb.patch_size" in ours[0], result.stderr[-2000:]
    assert all_runs(out) == []
