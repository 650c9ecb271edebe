"""model.channels_last, model.compile and trainer.precision=bf16-mixed: the same net, run faster.

channels_last: the net's 4-D weights and every step's batch are NHWC (recorded inside real runs
on RGB images, where NCHW and NHWC differ), the outputs equal the NCHW net's on the same weights,
and the analysis callbacks, which feed NCHW images, still work. compile: a run trains through
torch.compile (dynamo compiled graphs), its checkpoint holds the eager net's keys (`net.*`, no
`_orig_mod.`), and task=eval applies it. bf16-mixed runs end to end with the analysis on. On a
GPU (`gpu` marker, skipped without CUDA): trainer=gpu, plain and with all three.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

from cnnexp import models
from cnnexp.evaluate import evaluate
from cnnexp.train import train
from tests.conftest import FAST, all_runs, typed_cfg
from tests.helpers import is_nhwc
from tests.test_data import write_image_folder

DIGITS = ["model=tiny", "data=digits", "optimizer.lr=0.01", *FAST]
LEAN = [*DIGITS, "analysis=none", "data.train_size=256", "trainer.limit_val_batches=1"]
CHANCE = 0.1  # digits: 10 balanced classes


def finished_run(out: Path):
    [run] = all_runs(out)
    assert run.info.status == "FINISHED", run.data.tags.get("error")
    return run


def laid_out_weights(net: torch.nn.Module) -> list[torch.Tensor]:
    """The 4-D weights whose NCHW and NHWC layouts differ (C > 1 and a kernel wider than 1×1)."""
    return [p for p in net.parameters() if p.dim() == 4 and p.shape[1] > 1 and p[0, 0].numel() > 1]


def best_checkpoint(out: Path) -> dict:
    [ckpt] = out.glob("runs/**/checkpoints/best-*.ckpt")
    return torch.load(ckpt, map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_channels_last_run_feeds_nhwc_weights_and_batches(out, compose_job, tmp_path) -> None:
    images = write_image_folder(tmp_path / "images", per_class=30)  # RGB: NHWC differs
    probe = tmp_path / "probe.jsonl"
    train(
        compose_job(
            "model=tiny",
            "data=image_folder",
            f"data.path={images}",
            "data.image_size=8",
            *FAST,
            "model.channels_last=true",  # analysis on: its callbacks feed the net NCHW images
            "+callbacks.probe._target_=tests.helpers.MemoryFormatProbe",
            f"+callbacks.probe.path={probe}",
        )
    )
    run = finished_run(out)
    assert {"val_acc", "test_acc", "erf_size"} <= set(run.data.metrics)
    assert run.data.params["model.channels_last"] == "True"
    assert run.info.run_name == "tiny-relu-image_folder"  # the speed keys stay out of names
    rows = [json.loads(line) for line in probe.read_text().splitlines()]
    assert {row["stage"] for row in rows} == {"train", "validation", "test"}
    assert all(row["weights"] and row["input"] for row in rows), rows


@pytest.mark.parametrize(
    ("model", "input_shape"),
    [
        (["model=tiny"], (3, 8, 8)),
        (["model=resnet_small"], (3, 16, 16)),  # residual adds, strided 1×1 projections
        (["model=inception_small"], (3, 16, 16)),  # concatenation along channels
        (["model=mobilenet_small"], (3, 16, 16)),  # depthwise convs
        (["model=tiny", "model.head=flatten"], (3, 8, 8)),
        (["model=torchvision", "model.arch=resnet18"], (3, 32, 32)),
    ],
    ids=["tiny", "resnet_small", "inception_small", "mobilenet_small", "flatten", "resnet18"],
)
def test_channels_last_net_gives_the_outputs_of_the_nchw_net(model, input_shape) -> None:
    cfg = typed_cfg(*model, "model.channels_last=true")
    torch.manual_seed(0)
    net = models.build(cfg.model, input_shape, 10).eval()
    nchw = copy.deepcopy(net)
    module = models.Classifier(net, 10, channels_last=cfg.model.channels_last).eval()
    assert laid_out_weights(module.net) and all(map(is_nhwc, laid_out_weights(module.net)))
    assert not any(map(is_nhwc, laid_out_weights(nchw)))
    x = torch.randn(4, *input_shape)
    with torch.no_grad():
        torch.testing.assert_close(module(x), nchw(x), atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_compiled_run_keeps_the_eager_checkpoint_keys_and_evaluates(out, compose_job) -> None:
    torch._dynamo.reset()
    counters.clear()
    train(compose_job(*LEAN, "model.compile=true"))
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo compiled the steps' forward
    run = finished_run(out)
    cfg = typed_cfg(*LEAN)
    eager = models.Classifier(models.build(cfg.model, (1, 8, 8), 10), 10)
    keys = set(best_checkpoint(out)["state_dict"])
    assert keys == set(eager.state_dict()) and all(k.startswith("net.") for k in keys)
    test_acc = evaluate(compose_job("task=eval", f"resume={run.info.run_id}", *DIGITS))
    assert abs(test_acc - run.data.metrics["test_acc"]) < 1.5 / 359  # 359 images, ≤ 1 flips


@pytest.mark.slow
def test_bf16_mixed_with_channels_last_runs_end_to_end(out, compose_job) -> None:
    overrides = ["trainer.precision=bf16-mixed", "model.channels_last=true"]
    train(compose_job(*DIGITS, "trainer.max_epochs=2", "analysis.every_n_epochs=1", *overrides))
    run = finished_run(out)
    metrics = run.data.metrics
    assert metrics["val_acc"] > CHANCE and "health/conv1/mean" in metrics
    assert all(math.isfinite(value) for value in metrics.values()), metrics


GPU_RUN = [o for o in DIGITS if o != "trainer=cpu"] + ["trainer=gpu", "trainer.max_epochs=3"]
GPU_FAST = ["model.channels_last=true", "model.compile=true", "trainer.precision=bf16-mixed"]


@pytest.mark.slow
@pytest.mark.gpu
@pytest.mark.parametrize("speed", [[], GPU_FAST], ids=["plain", "channels_last-compile-bf16"])
def test_gpu_run_learns(speed, out, compose_job) -> None:
    train(compose_job(*GPU_RUN, *speed))
    run = finished_run(out)
    assert run.data.metrics["val_acc"] > CHANCE
    assert run.data.params["trainer.accelerator"] == "gpu"
