"""`make bench`: speed of the runner against baselines, as ratios measured in one run.

- runner vs plain PyTorch: the CLI's fit time per epoch (default logging: MLflow, checkpoint,
  progress bar) over a hand-written loop training the same net on the same tensors and batches.
- analysis overhead, at the default run's size (12 epochs): the CLI run with the insight
  callbacks (analysis=default) over analysis=none, as fit time (`analysis_vs_none`) and as the
  whole run's wall time, test, mistakes and explorer.html included (`analysis_run_vs_none`).
Both are measured in interleaved rounds (A, B, A, B, …; ROUNDS of them) so the machine's swings
hit both sides; each ratio is the median over rounds, with its min and max.
- model pairs of the studies (depthwise-separable vs stacked 3×3, Inception without vs with its
  1×1 reductions): training and inference images/s of one against the other, measured in
  interleaved rounds (A, B, A, B, …) so the machine's swings hit both; median and spread.
- `python -m cnnexp --help`: wall time (it must not import torch).
Writes outputs/bench.json. Timings, never assertions: compare ratios, not seconds.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from cnnexp import data, models, schema
from cnnexp.config import config_dir, repo_root

EPOCHS = 3  # runner vs plain
ROUNDS = 5
BENCH_ARGS = ["model=stacked3x3", "data=mnist5k", "trainer=cpu", f"trainer.max_epochs={EPOCHS}"]
DEFAULT_SIZE: list[str] = []  # the default run as `make train` runs it: stacked3x3, 12 epochs


def plain_loop_seconds(overrides: list[str]) -> float:
    """The same net, data, batch size, optimizer and schedule in a bare PyTorch loop."""
    schema.register()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    torch.manual_seed(cfg.seed)
    dm = data.build(cfg.data)
    net = models.build(cfg.model, dm.input_shape, dm.num_classes)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.optimizer.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=EPOCHS)
    (x, y), (xv, yv), bs = dm.train, dm.val, cfg.data.batch_size
    start = time.perf_counter()
    for _ in range(EPOCHS):
        net.train()
        for idx in torch.randperm(len(y)).split(bs):
            loss = F.cross_entropy(net(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        schedule.step()
        net.eval()
        with torch.no_grad():
            correct = sum(
                (net(xb).argmax(1) == yb).sum()
                for xb, yb in zip(xv.split(bs), yv.split(bs), strict=True)
            )
    del correct
    return time.perf_counter() - start


def runner_seconds(overrides: list[str], out: Path) -> tuple[float, float]:
    """(fit_seconds read back from its MLflow store, wall seconds) of a real CLI run into a new
    store under `out`."""
    cmd = [sys.executable, "-m", "cnnexp", f"paths.output_dir={out}", *overrides]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=repo_root(), check=True, capture_output=True)
    wall = time.perf_counter() - start
    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return run.data.metrics["fit_seconds"], wall


def summary(name: str, ratios: list[float]) -> dict[str, float]:
    """{name: median, name_min, name_max} of per-round ratios."""
    return {name: statistics.median(ratios), f"{name}_min": min(ratios), f"{name}_max": max(ratios)}


def interleaved(tmp: Path) -> dict[str, float]:
    """runner vs plain and analysis vs none, ROUNDS rounds, each side once per round."""
    results: dict[str, float] = {}
    plain, runner, analysis, bare, analysis_wall, bare_wall = ([] for _ in range(6))
    for i in range(ROUNDS):
        runner.append(runner_seconds([*BENCH_ARGS, "analysis=none"], tmp / f"r{i}")[0])
        plain.append(plain_loop_seconds(BENCH_ARGS))
        fit, wall = runner_seconds([*DEFAULT_SIZE, "analysis=none"], tmp / f"n{i}")
        bare.append(fit), bare_wall.append(wall)
        fit, wall = runner_seconds(DEFAULT_SIZE, tmp / f"a{i}")
        analysis.append(fit), analysis_wall.append(wall)
        print(
            f"round {i + 1}/{ROUNDS}: runner {runner[-1]:.1f} s, plain {plain[-1]:.1f} s, "
            f"analysis {analysis[-1]:.1f} s, none {bare[-1]:.1f} s (fit)",
            flush=True,
        )
    results["runner_epoch_s"] = statistics.median(runner) / EPOCHS
    results["plain_epoch_s"] = statistics.median(plain) / EPOCHS
    results |= summary("runner_vs_plain", [r / p for r, p in zip(runner, plain, strict=True)])
    results |= summary("analysis_vs_none", [a / b for a, b in zip(analysis, bare, strict=True)])
    results |= summary(
        "analysis_run_vs_none", [a / b for a, b in zip(analysis_wall, bare_wall, strict=True)]
    )
    return results


MODEL_PAIRS = [("mobilenet_small", "stacked3x3"), ("inception_no1x1", "inception_small")]


def model_speed_ratios(rounds: int = 7) -> dict[str, float]:
    """images/s of A over B per round, A and B timed back to back; median, min and max."""
    from cnnexp.models.facts import measure_throughput

    schema.register()
    results: dict[str, float] = {}
    for a, b in MODEL_PAIRS:
        nets = {}
        for name in (a, b):
            with initialize_config_dir(str(config_dir()), version_base="1.3"):
                cfg = compose("config", overrides=[f"model={name}"])
            nets[name] = models.build(cfg.model, (1, 28, 28), 10)
        batch = torch.randn(64, 1, 28, 28)
        for train in (True, False):
            ratios = sorted(
                measure_throughput(nets[a], batch, train).median
                / measure_throughput(nets[b], batch, train).median
                for _ in range(rounds)
            )
            key = f"{a}_vs_{b}_{'train' if train else 'infer'}"
            results[key] = statistics.median(ratios)
            results[f"{key}_min"], results[f"{key}_max"] = ratios[0], ratios[-1]
    return results


def help_seconds(repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "cnnexp", "--help"],
            cwd=repo_root(),
            check=True,
            capture_output=True,
        )
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        results = interleaved(Path(tmp))
    results |= model_speed_ratios()
    results["help_s"] = help_seconds()
    for key, value in results.items():
        print(f"{key:>42}: {value:.3f}")
    print(
        "target: runner_vs_plain <= 1.10, analysis_vs_none <= 1.10, help_s <= 1.0",
        f"({torch.get_num_threads()} threads)",
    )
    out = repo_root() / "outputs" / "bench.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
