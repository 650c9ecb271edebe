"""Input written to break the tool: code smuggled into a config, sizes no machine holds, mistakes
that used to surface only after a run opened, and crafted checkpoints. Each is one line naming
the key, before anything is called, allocated or opened (no MLflow store is even created); the
CLI cases also exit 2 with nothing else on stderr.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from cnnexp.errors import one_line
from cnnexp.evaluate import predict
from cnnexp.train import train
from tests.conftest import FAST, compose_job_cfg, run_cli

TINY = ["model=tiny", "data=digits", *FAST, "analysis=none"]
MAKEDIRS = "{_target_: os.makedirs, name: MARKER}"  # would create the folder MARKER if called
RANDOM_APPLY = "torchvision.transforms.v2.RandomApply"

SMUGGLED = [  # (overrides with MAKEDIRS somewhere, the key the line names)
    (
        [f"data.augment=[{{_target_: {RANDOM_APPLY}, transforms: [{MAKEDIRS}]}}]"],
        "data.augment[0].transforms[0]._target_: 'os.makedirs' is not allowed (allowed: a "
        "subclass of torchvision.transforms.v2.Transform",
    ),
    (
        ["+callbacks.x._target_=os.makedirs", "+callbacks.x.name=MARKER"],
        "callbacks.x._target_: 'os.makedirs' is not allowed (allowed: a subclass of "
        "lightning.pytorch.Callback",
    ),
    (
        [f"callbacks.model_checkpoint.dirpath={MAKEDIRS}"],
        "callbacks.model_checkpoint.dirpath._target_: 'os.makedirs' is not allowed",
    ),
    (
        [f"optimizer.lr={MAKEDIRS}"],
        "optimizer.lr._target_: 'os.makedirs' is not allowed (allowed: a subclass of "
        "torch.optim.Optimizer",
    ),
    (
        ["scheduler=step", f"+scheduler.gamma={MAKEDIRS}"],
        "scheduler.gamma._target_: 'os.makedirs' is not allowed",
    ),
    (
        [f"trainer.strategy={MAKEDIRS}"],
        "trainer.strategy._target_: 'os.makedirs' is not allowed: nothing is built from this key",
    ),
    ([f"+x={MAKEDIRS}"], "x: unknown key (allowed: analysis, "),
    (["optimizer._target_=os.makedirs", "+optimizer.name=MARKER"], "optimizer._target_: "),
]


def line_for(
    overrides: list[str], out: Path, blocks: list | None = None, store: bool = False
) -> str:
    """The one line a training with these overrides (and `blocks` as model.blocks) stops with,
    in-process, as the CLI runs it; no store is opened unless `store` (resume= needs one)."""
    cfg = compose_job_cfg(out, *TINY, *overrides)
    if blocks is not None:
        cfg.model.blocks = blocks
    try:
        train(cfg)
    except Exception as err:  # noqa: BLE001  (what the CLI would catch)
        line = one_line(err)
        assert line is not None, f"a traceback, not one line: {type(err).__name__}: {err}"
        assert store or not (out / "mlflow.db").exists(), "a store was opened"
        return line
    raise AssertionError(f"{overrides} was accepted")


@pytest.mark.parametrize(("overrides", "message"), SMUGGLED)
def test_no_target_outside_its_allowed_base_is_ever_called(overrides, message, out, tmp_path):
    marker = tmp_path / "called"
    line = line_for([o.replace("MARKER", str(marker)) for o in overrides], out)
    assert line.startswith(message), line
    assert not marker.exists(), "the smuggled function ran"


def test_nested_transforms_of_the_allowed_base_still_augment(out) -> None:
    flip = "{_target_: torchvision.transforms.v2.RandomHorizontalFlip}"
    nested = f"data.augment=[{{_target_: {RANDOM_APPLY}, transforms: [{flip}], p: 0.5}}]"
    cfg = compose_job_cfg(out, *TINY, nested, "trainer.fast_dev_run=true")
    train(cfg)  # a dry run: fit, validation and test with the nested transform


TOO_LARGE = [  # sizes that hung, crashed or ate the machine: one line before anything is built
    (
        ["model.blocks=[{repeat: 1000000000, blocks: [{conv: 3, channels: 4}]}]"],
        "model.blocks[0].repeat: 1000000000 makes the net at least 1,000,000,000 blocks long",
    ),
    (
        ["model.blocks=[{repeat: 2, blocks: [{repeat: 600, blocks: [{conv: 3, channels: 4}]}]}]"],
        "model.blocks[0].repeat: 2 makes the net at least 1,200 blocks long",
    ),
    (
        ["model.blocks=[{conv: 3, channels: 1000000000}]"],
        "model.blocks[0].channels: the net has 21,000,000,010 parameters and needs",
    ),
    (["model.width=100000"], "model.width: the net has"),
    (
        ["data=shapes", "data.image_size=512", "data.batch_size=100000", "data.n_samples=200"],
        "data.batch_size: 100000 images need",
    ),
    (
        ["data=shapes", "data.n_samples=100000000", "data.image_size=1024"],
        "data.n_samples: 100000000 needs 104857.6 GB of uint8 images in memory",
    ),
    (["data.num_workers=1000"], "data.num_workers: 1000 is not allowed (allowed: 0.."),
    (["trainer.devices=64"], "trainer.devices: 64 CPU processes on"),
    (["analysis=default", "analysis.n_images=100000"], "analysis.n_images: 100000 is not allowed"),
    (["analysis=default", "analysis.tile_px=100000"], "analysis.tile_px: 100000 is not allowed"),
]


@pytest.mark.parametrize(("overrides", "message"), TOO_LARGE)
def test_what_cannot_fit_this_machine_is_refused_before_anything_is_built(
    overrides, message, out
) -> None:
    assert line_for(overrides, out).startswith(message)


def test_deep_nesting_is_refused_naming_where(out) -> None:
    blocks = [{"conv": 3, "channels": 4}]
    for _ in range(20):  # deeper than an override can be written: set on the composed config
        blocks = [{"residual": blocks}]
    line = line_for([], out, blocks)
    assert "blocks nested more than 16 levels deep" in line and line.startswith("model.blocks[0]")


LATE = [  # mistakes that used to open a run and then fail it (or train nothing and record it)
    (["trainer.val_check_interval=1000"], "trainer.val_check_interval: 1000 is more than the 20"),
    (["trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches: 0 is not allowed"),
    (["callbacks.model_checkpoint.monitor=val_accc"], "callbacks.model_checkpoint.monitor: "),
    (["callbacks=early_stopping", "callbacks.early_stopping.monitor=loss"], "callbacks.early_"),
    (["seed=-1"], "seed: -1 is not allowed (allowed: an integer >= 0 and <= 4294967295)"),
    (["seed=1099511627776"], "seed: 1099511627776 is not allowed"),
    (["data.split_seed=-5"], "data.split_seed: -5 is not allowed"),
    (["optimizer.lr=inf"], "optimizer.lr: inf is not allowed (allowed: a finite number)"),
    (["scheduler=step", "scheduler.gamma=nan"], "scheduler.gamma: nan is not allowed"),
    (["trainer.max_time={days:-1}"], "trainer.max_time: {'days': -1} ends training before"),
    (["trainer.max_time=00:00:00:00"], "trainer.max_time: '00:00:00:00' ends training before"),
    (["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val: -1 is not allowed"),
    (["trainer.max_epochs=0"], "trainer.max_epochs: 0 is not allowed (allowed: an integer >= 1"),
    (["trainer.max_steps=0"], "trainer.max_steps: 0 is not allowed"),
    (["trainer.limit_train_batches=0"], "trainer.limit_train_batches: 0 is not allowed"),
    (["trainer.limit_train_batches=1.5"], "trainer.limit_train_batches: 1.5 is not allowed"),
    (["trainer.check_val_every_n_epoch=0"], "trainer.check_val_every_n_epoch: 0 is not allowed"),
]


@pytest.mark.parametrize(("overrides", "message"), LATE)
def test_mistakes_known_before_a_run_opens_are_refused_then(overrides, message, out) -> None:
    assert line_for(overrides, out).startswith(message)


def test_limits_with_a_no_limit_value_accept_it(out) -> None:
    """-1 means "no limit" for max_epochs with max_steps: the run trains and ends."""
    cfg = compose_job_cfg(
        out, *TINY, "trainer.max_epochs=-1", "trainer.max_steps=2", "trainer.fast_dev_run=false"
    )
    from cnnexp.validate import validate

    validate(cfg)


CRAFTED = [  # (what the checkpoint holds, instead of what cnnexp writes; the line's end)
    ({"state_dict": {}}, "does not say how to apply its net"),
    ({"facts": {"class_names": None}}, "is not laid out as cnnexp writes checkpoints"),
    ({"no_state_dict": True}, "is not laid out as cnnexp writes checkpoints"),
    (
        {"model": {"blocks": [{"repeat": 100000000, "blocks": [{"conv": 3, "channels": 4}]}]}},
        "holds a net cnnexp refuses: model.blocks[0].repeat: 100000000 makes the net",
    ),
    ({"model": {"blocks": [{"conv": 3, "channels": 10**9}]}}, "too large for the"),
    ({"model": {"kind": "evil"}}, "holds a net cnnexp refuses: model.kind: 'evil' is not"),
    ({"model": {"evil": 1}}, "holds a net cnnexp refuses: model.evil: unknown key"),
    ({"state_dict": {"net.x": torch.zeros(1)}}, "its weights do not fit the net its config"),
]


def crafted_checkpoint(path: Path, change: dict) -> Path:
    """A checkpoint as cnnexp lays one out, with `change` applied."""
    model = {"kind": "cnn", "name": "x", "blocks": [{"conv": 3, "channels": 4}]}
    model |= change.get("model", {})
    facts = {"model": model, "input_shape": [1, 8, 8], "class_names": ["a", "b"]}
    facts |= {"mean": [0.5], "std": [0.2], "data": "digits"} | change.get("facts", {})
    state = {"mlflow_run_id": "0" * 32, "cnnexp_inference": facts, "state_dict": {}}
    state |= {k: v for k, v in change.items() if k == "state_dict"}
    if "state_dict" in change and not change["state_dict"]:
        del state["cnnexp_inference"]
    if change.get("no_state_dict"):
        del state["state_dict"]
    torch.save(state, path)
    return path


@pytest.mark.parametrize(("change", "message"), CRAFTED)
def test_a_crafted_checkpoint_is_one_line_for_predict(change, message, tmp_path, out) -> None:
    ckpt = crafted_checkpoint(tmp_path / "crafted.ckpt", change)
    image = tmp_path / "digit.png"
    cv2.imwrite(str(image), np.zeros((8, 8), np.uint8))
    cfg = compose_job_cfg(out, "task=predict", f"resume={ckpt}", f"predict.path={image}")
    with pytest.raises(Exception) as caught:
        predict(cfg)
    line = one_line(caught.value)
    assert line is not None, caught.value
    assert line.startswith(f"resume: checkpoint {ckpt}") and message in line, line


@pytest.mark.slow
def test_smuggled_code_on_the_command_line_exits_2_and_runs_nothing(out, tmp_path) -> None:
    marker = tmp_path / "called"
    nested = SMUGGLED[0][0][0].replace("MARKER", str(marker))
    result = run_cli(*TINY, nested, out=out)
    assert result.returncode == 2, result.stderr[-2000:]
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"cnnexp: error: {SMUGGLED[0][1]}"), line
    assert not marker.exists() and not (out / "mlflow.db").exists()


def test_a_file_that_is_no_sqlite_store_is_one_line(out, tmp_path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(bytes(range(256)) * 20)
    line = line_for([f"logger.tracking_uri=sqlite:///{garbage}"], out)
    assert line == (
        f"logger.tracking_uri: cannot use MLflow store sqlite:///{garbage} "
        "((sqlite3.DatabaseError) file is not a database)"
    )


@pytest.mark.parametrize("task", ["train", "predict"])
def test_resume_of_a_file_that_is_no_checkpoint_is_one_line(task, out, tmp_path) -> None:
    text = tmp_path / "passwd"
    text.write_text("root:x:0:0:root:/root:/bin/bash\n")
    relative = os.path.relpath(text, Path.cwd())  # as `resume=../../../etc/passwd` reaches it
    if task == "train":
        line = line_for([f"resume={relative}"], out, store=True)
    else:
        cfg = compose_job_cfg(out, "task=predict", f"resume={relative}", f"predict.path={text}")
        with pytest.raises(Exception) as caught:
            predict(cfg)
        line = one_line(caught.value)
    assert line is not None and line.startswith(f"resume: {relative} is not a checkpoint"), line


@pytest.mark.slow
def test_a_config_that_contains_itself_is_one_line(out, tmp_path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "loop.yaml").write_text(
        "defaults: [_cnn, _self_]\nname: loop\nblocks: &b\n  - residual: *b\n"
    )
    result = run_cli(f"--config-dir={tmp_path}", "model=loop", "data=digits", out=out)
    assert result.returncode == 2, result.stderr[-2000:]
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"cnnexp: error: {tmp_path}/model/loop.yaml: this config nests itself")
