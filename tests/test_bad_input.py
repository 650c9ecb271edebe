"""Bad input: one clear line naming the key, a non-zero exit, no MLflow run opened.

Every case runs in-process through train() (the same checks the CLI runs, in a second each);
a few run through the real CLI too, for the printed line, the exit code and Hydra's own errors.
"""

from __future__ import annotations

import pytest
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from cnnexp.config import ConfigError
from cnnexp.train import train
from tests.conftest import FAST, all_runs, run_cli

BAD_INPUTS = [
    (["model.activation=swish"], "model.activation: unknown value 'swish'"),
    (["model.blocks=[{conv:0,channels:8}]"], "model.blocks[0].conv: 0 is not allowed"),
    (["model.blocks=[{conv:4,channels:8}]"], "kernel 4 is even"),
    (["model.blocks=[{conv:3,channels:-2}]"], "model.blocks[0].channels: -2"),
    (
        [
            "data=digits",
            "model.blocks=[{conv:3,channels:4},{pool:max},{pool:max},{pool:max},{pool:max}]",
        ],
        "model.blocks[4]: ",
    ),
    (["data.name=imagenet"], "data.name: unknown value 'imagenet'"),
    (["data=image_folder"], "data.path"),
    (["data=image_folder", "data.path=/no/such/folder"], "data.path"),
    (["data=mnist", "data.download=false"], "data.root"),
    (["data=mnist", "data.download=true"], "data.root"),
    (["trainer.max_epohcs=3"], None),  # Hydra's own error for an unknown key
    (["+trainer.max_epohcs=3"], "trainer.max_epohcs: unknown key"),
    (["optimizer.momentm=0.9"], None),
    (["+optimizer.momentm=0.9"], "optimizer.momentm: unknown key"),
    (["model=resnet9000"], "Could not find 'model/resnet9000'"),
]


def overrides_for(overrides: list[str], out) -> list[str]:
    data_root = [f"data.root={out}/data"] if "data=mnist" in overrides else []
    return [*overrides, *FAST, *data_root]


@pytest.mark.parametrize(("overrides", "message"), BAD_INPUTS)
def test_bad_input_is_one_config_error_before_any_run(overrides, message, out, compose_job) -> None:
    try:
        cfg = compose_job(*overrides_for(overrides, out))
    except (HydraException, OmegaConfBaseException):  # Hydra's own checks, before ours
        assert message is None or message.startswith("Could not")
        return
    with pytest.raises(ConfigError) as caught:
        train(cfg)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert [r for r in all_runs(out) if r.info.status == "RUNNING"] == []


CLI_CASES = [BAD_INPUTS[i] for i in (0, 2, 8, 10, 13, 14)]  # ours from each stage; Hydra's own


@pytest.mark.slow
@pytest.mark.parametrize(("overrides", "message"), CLI_CASES)
def test_bad_input_on_the_command_line_gives_one_line_and_exit_2(overrides, message, out) -> None:
    result = run_cli(*overrides_for(overrides, out), out=out)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    ours = [line for line in result.stderr.splitlines() if line.startswith("cnnexp: error:")]
    if message is not None and not message.startswith("Could not"):
        assert result.returncode == 2
        assert len(ours) == 1 and message in ours[0], result.stderr[-2000:]
    elif message is not None:  # Hydra's own message for an unknown option lists the options
        assert message in result.stderr
    assert [r for r in all_runs(out) if r.info.status == "RUNNING"] == []
