"""Bad input: one line `<key>: <what was wrong> (…)`, exit 2, no traceback, no MLflow run.

A corpus of real mistakes runs in-process (compose as the CLI does, then train(): every check
the CLI runs, in a second each); hypothesis throws generated mistakes at every key of the schema;
a few cases run through the real CLI for the printed line, the exit code and an empty stderr
otherwise.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import DictConfig

from cnnexp.errors import one_line
from cnnexp.schema import (
    AnalysisConf,
    CompareConf,
    Config,
    LoggerConf,
    ReportConf,
    TrainerConf,
)
from cnnexp.train import train
from cnnexp.validate import validate
from tests.conftest import FAST, all_runs, cli_in_process, compose_cfg, compose_job_cfg, run_cli

TINY = ["model=tiny", "data=digits", *FAST]
BAD_INPUTS = [  # (overrides, the start of the one line)
    (["trainer.max_epochs=abc"], "trainer.max_epochs: 'abc' is not allowed (allowed: an integer)"),
    (["trainer.max_epochs=1.5"], "trainer.max_epochs: 1.5 is not allowed (allowed: an integer)"),
    (["seed=abc"], "seed: 'abc' is not allowed (allowed: an integer)"),
    (["optimizer.lr=-1"], "optimizer.lr: -1 is not allowed (Invalid learning rate"),
    (["optimizer.weight_decay=-1"], "optimizer.weight_decay: -1 is not allowed (Invalid weight"),
    (["scheduler=step", "scheduler.step_size=0"], "scheduler.step_size: 0 is not allowed"),
    (["scheduler=cosine", "scheduler.T_max=0"], "scheduler.T_max: 0 is not allowed"),
    (["analysis.n_images=0"], "analysis.n_images: 0 is not allowed (allowed: an integer >= 1 and"),
    (["data.augment.enabled=true"], "data.augment.enabled: data.augment is a list, it has no"),
    (["analysis.every_n_epochs=0"], "analysis.every_n_epochs: 0 is not allowed"),
    (["analysis.every_n_epochs=-1"], "analysis.every_n_epochs: -1 is not allowed"),
    (["analysis.max_channels=-1"], "analysis.max_channels: -1 is not allowed"),
    (
        ["analysis.normalize=global"],
        "analysis.normalize: 'global' is not allowed (allowed: channel",
    ),
    (["trainer.accelerator=gpu"], "trainer.accelerator: 'gpu' is not allowed"),  # no GPU in CI
    (["trainer.precision=17"], "trainer.precision: 17 is not allowed (Precision 17 is invalid"),
    (["trainer.limit_train_batches=-1"], "trainer.limit_train_batches: -1 is not allowed"),
    (["trainer.max_epohcs=3"], "trainer.max_epohcs: unknown key (did you mean trainer.max_epochs?"),
    (["+trainer.max_epochs=3"], "trainer.max_epochs: already in the config; set it without '+'"),
    (["+trainer.colour=red"], "trainer.colour: unknown key"),
    (["model.batch_norm=maybe"], "model.batch_norm: 'maybe' is not allowed (allowed: true or"),
    (["model.channels_last=nhwc"], "model.channels_last: 'nhwc' is not allowed (allowed: true"),
    (["model.compile=maybe"], "model.compile: 'maybe' is not allowed (allowed: true or false)"),
    (
        ["model.activation=swish"],
        "model.activation: 'swish' is not allowed (allowed: relu, leaky_relu",
    ),
    (["+model.activation_args.elu.foo=1"], "model.activation_args.elu.foo: unknown key"),
    (["+model.activation_args.swish.beta=1"], "model.activation_args.swish: unknown key"),
    (["model.blocks=[{conv:0,channels:8}]"], "model.blocks[0].conv: 0 is not allowed"),
    (["model.blocks=[{conv:4,channels:8}]"], "model.blocks[0].conv: kernel 4 is even"),
    (["model.blocks=[{conv:3,channels:8,strid:2}]"], "model.blocks[0].strid: unknown key (did"),
    (["model.blocks=[3]"], "model.blocks[0]: 3 is not a mapping like {conv: 3, channels: 32}"),
    (["model.blocks=[[{conv:3,channels:4}]]"], "model.blocks[0]: [{'conv': 3, 'channels': 4}] is"),
    (
        ["model.blocks=[{conv:3,channels:4},{pool:max},{pool:max},{pool:max},{pool:max}]"],
        "model.blocks[4]: ",
    ),
    (["model=resnet9000"], "model: unknown option 'resnet9000' (allowed: bottleneck1x1, deep"),
    (["data.name=imagenet"], "data.name: 'imagenet' is not allowed"),
    (["data.batch_size=0"], "data.batch_size: 0 is not allowed (allowed: an integer >= 1)"),
    (["data=image_folder"], "data.path: no value given"),
    (["data=image_folder", "data.path=/no/such/folder"], "data.path: '/no/such/folder' is not"),
    (["data=image_folder", "data.path=ONE_CLASS"], "data.path: ONE_CLASS holds images of 1 class"),
    (["data=mnist", "data.download=false"], "data.root: MNIST data missing"),
    (
        ["task=fly"],
        "task: 'fly' is not allowed (allowed: train, inspect, report, compare, eval, predict)",
    ),
    (["logger.experiment_name="], "logger.experiment_name: empty (allowed: a non-empty name)"),
    (["optimizer._target_=torch.optim.Nope"], "optimizer._target_: cannot import"),
    (["optimizer.momentm=0.9"], "optimizer.momentm: unknown key"),
    (["+optimizer.momentm=0.9"], "optimizer.momentm: unknown key"),
    (
        ["+callbacks.x._target_=lightning.pytorch.callbacks.Timer", "+callbacks.x.colour=1"],
        "callbacks.x.colour: unknown key",
    ),
    (["resume_finished=maybe"], "resume_finished: 'maybe' is not allowed"),
    (["model.blocks=[1,"], "model.blocks=[1,: cannot parse this override"),
    (["model=tiny,deep"], "model=tiny,deep: a comma list sweeps only with -m"),
]


def one_class_folder(root: Path) -> Path:
    (root / "cats").mkdir(parents=True)
    (root / "cats" / "a.png").write_bytes(b"")  # counted by name; never read: refused first
    return root


def one_line_for(overrides: list[str], out: Path) -> str:
    """The line the CLI would print for these overrides (composition errors included)."""
    folder = str(one_class_folder(out.parent / "one_class"))
    overrides = [o.replace("ONE_CLASS", folder) for o in overrides]
    data_root = [f"data.root={out}/data"] if "data=mnist" in overrides else []
    try:
        train(compose_job_cfg(out, *TINY, *overrides, *data_root))
    except Exception as err:  # noqa: BLE001  (what the CLI would catch)
        line = one_line(err)
        assert line is not None, f"a traceback, not one line: {type(err).__name__}: {err}"
        return line
    raise AssertionError(f"{overrides} was accepted")


@pytest.mark.parametrize(("overrides", "message"), BAD_INPUTS)
def test_bad_input_is_one_line_before_any_run(overrides, message, out, compose_job) -> None:
    line = one_line_for(overrides, out)  # compose_job: HydraConfig unset afterwards
    message = message.replace("ONE_CLASS", str(out.parent / "one_class"))
    assert line.startswith(message) and "\n" not in line, line
    assert all_runs(out) == []  # not even a FAILED one


def bad_value(field: dataclasses.Field, pick: int) -> object | None:
    """A value the field must refuse: a wrong type, or one past its range or choices."""
    meta = field.metadata
    if "choices" in meta:
        return "[no-such-choice]" if field.type == list[str] else "no-such-choice"
    past = {"ge": (-1, -2), "gt": (0, -1), "le": (1, 2), "lt": (0, 1)}  # offsets past a bound
    values = [meta[k] + d for k, offsets in past.items() if k in meta for d in offsets]
    values = [v for v in values if v not in meta.get("also", ())]  # -1 may mean "no limit"
    if values:
        return values[pick % len(values)]
    if field.type in (int, float, int | None, float | None):
        return "abc"
    if field.type in (bool, bool | None):
        return "maybe"
    return None


def leaves(schema: type, prefix: str) -> list[tuple[str, dataclasses.Field]]:
    """(dotted key, field) of every simple-typed field of a schema, nested ones included."""
    found = []
    for field in dataclasses.fields(schema):
        key = f"{prefix}{field.name}"
        if dataclasses.is_dataclass(field.type):
            found += leaves(field.type, f"{key}.")
        elif bad_value(field, 0) is not None:
            found.append((key, field))
    return found


SCHEMA_LEAVES = [
    leaf
    for schema, prefix in [
        (Config, ""),
        (TrainerConf, "trainer."),
        (LoggerConf, "logger."),
        (AnalysisConf, "analysis."),
        (ReportConf, "report."),
        (CompareConf, "compare."),
    ]
    for leaf in leaves(schema, prefix)
    if leaf[0] not in ("paths", "trainer", "logger", "analysis", "report", "compare")
]


@settings(max_examples=60, deadline=None)
@given(leaf=st.sampled_from(SCHEMA_LEAVES), pick=st.integers(0, 3))
def test_any_bad_value_of_any_schema_key_is_one_line_naming_it(leaf, pick, tmp_path_factory):
    key, field = leaf
    value = bad_value(field, pick)
    if value is None:
        return
    out = tmp_path_factory.mktemp("out")
    try:
        cfg: DictConfig = compose_job_cfg(out, *TINY, f"{key}={value}")
        validate(cfg)
    except Exception as err:  # noqa: BLE001
        line = one_line(err)
        assert line is not None and line.startswith(f"{key}: ") and "\n" not in line, (key, err)
        return
    raise AssertionError(f"{key}={value} was accepted")


@settings(max_examples=40, deadline=None)
@given(leaf=st.sampled_from(SCHEMA_LEAVES), cut=st.integers(1, 3))
def test_a_misspelt_key_is_refused_with_the_closest_key(leaf, cut) -> None:
    key, _ = leaf
    section, _, name = key.rpartition(".")
    if len(name) <= cut + 3:
        return
    typo = f"{section}.{name[:-cut]}" if section else name[:-cut]
    with pytest.raises(Exception) as caught:
        compose_cfg(*TINY, f"{typo}=1")
    line = one_line(caught.value)
    assert line is not None and line.startswith(f"{typo}: unknown key"), line


CLI_CASES = [  # (overrides, environment, the line's start): all of stderr is that one line
    (["trainer.max_epohcs=3"], {}, "trainer.max_epohcs: unknown key (did you mean"),
    (["trainer.max_epochs=abc"], {}, "trainer.max_epochs: 'abc' is not allowed"),
    (["optimizer.lr=-1"], {}, "optimizer.lr: -1 is not allowed"),  # after torch's import
    (["model=resnet9000"], {}, "model: unknown option 'resnet9000'"),
    (["paths.output_dir=/etc/hostname/x"], {}, "paths.output_dir: cannot create /etc/hostname"),
    (["model.compile=true"], {"CXX": "no-such-c++"}, "model.compile: true, but torch.compile"),
]  # (the compiler probe is torch's, cached per process: only a fresh one sees CXX)
IN_PROCESS_CASES = [  # as CLI_CASES, after torch's import too: in this process (~8 s less each)
    ([], {"MLFLOW_TRACKING_URI": "bogus://x"}, "MLFLOW_TRACKING_URI: cannot use MLflow store"),
    (["logger.experiment_name="], {}, "logger.experiment_name: empty"),
]


@pytest.mark.parametrize(("overrides", "env", "message"), IN_PROCESS_CASES)
def test_bad_input_found_late_is_all_that_the_cli_says(overrides, env, message, out):
    result = cli_in_process(*TINY, *overrides, out=out, env=env or None)
    assert result.returncode == 2, result.stderr[-2000:]
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"cnnexp: error: {message}"), line
    assert result.stdout == "" and all_runs(out) == []


@pytest.mark.slow
@pytest.mark.parametrize(("overrides", "env", "message"), CLI_CASES)
def test_bad_input_on_the_command_line_is_all_that_stderr_says(overrides, env, message, out):
    result = run_cli(*TINY, *overrides, out=out, env=env or None)
    assert result.returncode == 2, result.stderr[-2000:]
    [line] = result.stderr.strip().splitlines()  # nothing before it, nothing after it
    assert line.startswith(f"cnnexp: error: {message}"), line
    assert all_runs(out) == []
