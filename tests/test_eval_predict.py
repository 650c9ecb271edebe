"""task=eval and task=predict apply a trained net rebuilt from its checkpoint alone.

One tiny net is trained once into a store shared by this module's tests; then the real CLI:
eval logs a new FINISHED run linked to the trained one whose test_acc is the training's own
(same weights, same normalisation); data the net cannot take is one line, exit 2, no run;
predict on PNGs written from the digits test split gives exactly what a forward pass on the
training's test tensors gives; a checkpoint file works for resume=, a crafted one runs nothing.
"""

from __future__ import annotations

import csv
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from PIL import Image
from sklearn.datasets import load_digits

from cnnexp import data, models
from cnnexp.data.splits import split_indices
from cnnexp.errors import ConfigError
from cnnexp.evaluate import evaluate, predict
from cnnexp.report.select import select_runs
from tests.conftest import (
    FAST,
    all_runs,
    cli_in_process,
    compose_job_cfg,
    run_cli,
    store,
    typed_cfg,
)

TRAIN = ["model=tiny", "data=digits", "analysis=none", "optimizer.lr=0.01", *FAST]
TRAIN += ["trainer.max_epochs=3"]
N_IMAGES = 60  # digits test images written as PNGs


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, str, float]:
    """(store folder, run id, test_acc) of one tiny net trained through the CLI."""
    out = tmp_path_factory.mktemp("eval") / "outputs"
    result = run_cli(*TRAIN, out=out)
    assert result.returncode == 0, result.stderr[-2000:]
    [run] = all_runs(out)
    return out, run.info.run_id, run.data.metrics["test_acc"]


def new_runs(out: Path, before: set[str]) -> list:
    return [r for r in all_runs(out) if r.info.run_id not in before]


def run_ids(out: Path) -> set[str]:
    return {r.info.run_id for r in all_runs(out)}


def best_checkpoint(out: Path) -> Path:
    [ckpt] = out.glob("runs/*/*/checkpoints/best-*.ckpt")
    return ckpt


def digits_test_pngs(folder: Path) -> None:
    """The first N_IMAGES of the digits test split as 8×8 greyscale PNGs `<i>.png` (i: position
    in the split), scaled 0..16 → 0..255 as the digits source scales them; in two subfolders, as
    predict searches recursively."""
    bunch = load_digits()
    pixels = np.rint(bunch.images * (255 / 16)).astype(np.uint8)
    _, _, test = split_indices(bunch.target, 0.1, 0.2, 42)  # the digits defaults
    for i, position in enumerate(test[:N_IMAGES]):
        file = folder / f"part{i % 2}" / f"{i:03d}.png"
        file.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[position], mode="L").save(file)


def forward_on_test_split(ckpt: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities, labels) of the first N_IMAGES test images as the training prepared them,
    through the net rebuilt from conf/ and the checkpoint's weights (not by cnnexp.evaluate)."""
    cfg = typed_cfg(*TRAIN)
    dm = data.build(cfg.data)
    net = models.build(cfg.model, dm.input_shape, dm.num_classes)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    net.load_state_dict({k.removeprefix("net."): v for k, v in state.items()})
    with torch.no_grad():
        x = dm.inputs(dm.test[0][:N_IMAGES])
        return net.eval()(x).softmax(dim=1), dm.test[1][:N_IMAGES]


def read_rows(csv_file: Path) -> list[dict[str, str]]:
    with csv_file.open(newline="") as stream:
        return list(csv.DictReader(stream))


@pytest.mark.slow
def test_eval_logs_a_linked_run_with_the_training_test_acc(trained) -> None:
    out, run_id, test_acc = trained
    before = run_ids(out)
    result = cli_in_process("task=eval", f"resume={run_id}", *TRAIN, out=out)
    assert result.returncode == 0, result.stderr[-2000:]
    [run] = new_runs(out, before)
    assert run.info.status == "FINISHED"
    tags, metrics = run.data.tags, run.data.metrics
    assert tags["cnnexp.evaluates"] == tags["mlflow.parentRunId"] == run_id
    assert tags["cnnexp.kind"] == "eval"
    assert tags["cnnexp.checkpoint"].startswith(f"runs:/{run_id}/checkpoints/best-")
    assert abs(metrics["test_acc"] - test_acc) < 1e-6  # same weights, same normalisation
    assert "test_loss" in metrics and "test_class_acc/0" in metrics
    assert run.data.params["data.name"] == "digits" and run.data.params["model.name"] == "tiny"
    assert "this run: http" in result.stdout and run.info.run_id in result.stdout
    assert store(out).get_run(run_id).info.status == "FINISHED"  # the trained run untouched
    compared = select_runs(store(out), "cnnexp", None, ["FINISHED"], 50).runs
    assert [r.run_id for r in compared] == [run_id]  # task=report compares training runs only


@pytest.mark.slow
@pytest.mark.parametrize(
    ("other", "says"),
    [
        (["data=mnist5k"], "data: mnist5k has 1×28×28 images of 10 classes, the net in"),
        (["data=shapes", "data.image_size=8"], "data: shapes has 1×8×8 images of 4 classes"),
    ],
)
def test_eval_on_data_the_net_cannot_take_is_one_line_and_no_run(trained, other, says) -> None:
    out, run_id, _ = trained
    before = run_ids(out)
    result = cli_in_process("task=eval", f"resume={run_id}", *FAST, *other, out=out)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"cnnexp: error: {says}")
    assert "takes 1×8×8 images of 10 classes" in line
    assert run_ids(out) == before


@pytest.mark.slow
def test_predict_writes_what_the_net_gives_on_the_training_tensors(trained, tmp_path) -> None:
    out, run_id, _ = trained
    digits_test_pngs(tmp_path / "images")
    before = run_ids(out)
    by_run, by_file = tmp_path / "by_run.csv", tmp_path / "by_file.csv"
    common = ["task=predict", f"predict.path={tmp_path / 'images'}", "predict.top_k=3"]
    result = cli_in_process(*common, f"resume={run_id}", f"predict.output={by_run}", out=out)
    assert result.returncode == 0, result.stderr[-2000:]
    assert run_ids(out) == before  # predict opens no run

    rows = read_rows(by_run)
    assert [Path(r["path"]) for r in rows] == sorted((tmp_path / "images").rglob("*.png"))
    columns = ["path", "class", "confidence"]
    columns += [f"top{i}_{c}" for i in (1, 2, 3) for c in ("class", "prob")]
    assert list(rows[0]) == columns
    top = np.array([[float(r[f"top{i}_prob"]) for i in (1, 2, 3)] for r in rows])
    assert (top.sum(axis=1) <= 1 + 1e-5).all() and (np.diff(top, axis=1) <= 0).all()
    assert all(r["class"] == r["top1_class"] and r["confidence"] == r["top1_prob"] for r in rows)

    probs, labels = forward_on_test_split(best_checkpoint(out))
    in_split = sorted(rows, key=lambda r: int(Path(r["path"]).stem))  # by position in the split
    assert [int(r["class"]) for r in in_split] == probs.argmax(dim=1).tolist()
    confidence = [float(r["confidence"]) for r in in_split]
    assert np.allclose(confidence, probs.max(dim=1).values.numpy(), atol=1e-5)
    hits = [int(r["class"]) == y for r, y in zip(in_split, labels.tolist(), strict=True)]
    accuracy = np.mean(hits)
    assert accuracy > 0.2  # ten classes: chance is 0.1

    elsewhere = tmp_path / "no_store"  # a checkpoint file needs no MLflow store
    ckpt = f"resume='{best_checkpoint(out)}'"  # quoted: the name holds '='
    result = cli_in_process(*common, ckpt, f"predict.output={by_file}", out=elsewhere)
    assert result.returncode == 0, result.stderr[-2000:]
    assert read_rows(by_file) == rows
    assert not (elsewhere / "mlflow.db").exists()


class RunsCode:
    """A pickle that runs code when loaded without weights_only (what a crafted file does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_checkpoint_is_refused_without_running_its_code(tmp_path) -> None:
    marker, crafted = tmp_path / "pwned", tmp_path / "evil.ckpt"
    crafted.write_bytes(pickle.dumps({"mlflow_run_id": "x", "state_dict": RunsCode(marker)}))
    (tmp_path / "images").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "images" / "a.png")
    out = tmp_path / "outputs"
    result = cli_in_process(
        "task=predict", f"resume={crafted}", f"predict.path={tmp_path}", out=out
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"cnnexp: error: resume: {crafted} is not a checkpoint that loads")
    assert not marker.exists()


def mistakes(folder: Path, ckpt: Path) -> list[tuple[list[str], str]]:
    """(overrides, the start of the one line) for predict and eval."""
    (folder / "empty").mkdir()
    (folder / "bad").mkdir()
    (folder / "bad" / "x.png").write_bytes(b"not an image")
    resume, bad = f"resume='{ckpt}'", f"predict.path={folder / 'bad'}"
    return [
        (["task=predict", bad], "resume: no value given (task=predict needs resume="),
        (["task=eval"], "resume: no value given (task=eval needs resume="),
        (["task=eval", "resume=nope"], "resume: 'nope' is neither a checkpoint file nor a run id"),
        (["task=predict", resume], "predict.path: no value given"),
        (["task=predict", resume, f"predict.path={folder / 'no'}"], "predict.path: '.*' does not"),
        (["task=predict", resume, f"predict.path={folder / 'empty'}"], "predict.path: no images"),
        (["task=predict", resume, bad], "predict.path: cannot read image"),
        (["task=predict", resume, bad, "predict.top_k=0"], "predict.top_k: 0 is not allowed"),
    ]


@pytest.mark.slow
def test_mistakes_are_one_config_error_and_open_no_run(trained, tmp_path) -> None:
    out, _, _ = trained
    before = run_ids(out)
    for overrides, message in mistakes(tmp_path, best_checkpoint(out)):
        cfg = compose_job_cfg(out, *FAST, *overrides)
        task = evaluate if cfg.task == "eval" else predict
        try:
            with pytest.raises(ConfigError, match=f"^{message}".replace("(", r"\(")):
                task(cfg)
        finally:
            HydraConfig.instance().cfg = None
    assert run_ids(out) == before


@pytest.mark.slow
def test_eval_of_a_checkpoint_file_links_the_run_it_names(trained) -> None:
    out, run_id, test_acc = trained
    before, ckpt = run_ids(out), best_checkpoint(out)
    cfg = compose_job_cfg(out, "task=eval", f"resume='{ckpt}'", *TRAIN)
    try:
        assert abs(evaluate(cfg) - test_acc) < 1e-6
    finally:
        HydraConfig.instance().cfg = None
    [run] = new_runs(out, before)
    assert run.info.status == "FINISHED" and run.data.tags["cnnexp.checkpoint"] == str(ckpt)
    assert run.data.tags["cnnexp.evaluates"] == run_id
