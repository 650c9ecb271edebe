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
- a run's first use of a new sqlite store against an existing one (`new_store_extra_s`): a fresh
  process opens the store as a run does (seeded from the empty-store template, experiment
  created) in interleaved rounds; the median of new minus existing, with its spread.
- data paths (`data_paths`): peak memory (the run process's max RSS) of a short CLI run per
  data-path mode, over the same run on `digits`: CIFAR-10 in memory (files written in the real
  format), a folder of FOLDER_IMAGES PNGs of FOLDER_SIZE² streamed from its cache (twice: the
  second run must decode nothing) and held in memory; then images/s of one pass over the
  folder's training batches, streamed against in memory, in interleaved rounds.
- with a CUDA device: training images/s of the runner over a raw PyTorch loop, CIFAR-10 resident
  on the GPU on both sides (`gpu_runner_vs_raw`, interleaved rounds); nothing without one.
Writes outputs/bench.json (`python -m cnnexp.bench data` runs only the data part, `... runner`
only runner vs plain and the new store, and each updates it).
Timings, never assertions: compare ratios, not seconds.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient

from cnnexp import api, data, models
from cnnexp.data.ondisk import write_cifar10, write_png_folder
from cnnexp.paths import repo_root
from cnnexp.typed import typed_config

EPOCHS = 3  # runner vs plain
ROUNDS = 5
BENCH_ARGS = ["model=stacked3x3", "data=mnist5k", "trainer=cpu", f"trainer.max_epochs={EPOCHS}"]
DEFAULT_SIZE: list[str] = []  # the default run as `make train` runs it: stacked3x3, 12 epochs


def plain_loop_seconds(overrides: list[str], device: str = "cpu") -> tuple[float, int]:
    """(seconds, training images seen) of the same net, data, batch size, optimizer and
    schedule in a bare PyTorch loop on `device`, the uint8 images resident there (as
    data.device puts them) and normalised per batch."""
    cfg = typed_config(api.compose(overrides))
    torch.manual_seed(cfg.seed)
    dm = data.build(cfg.data)
    net = models.build(cfg.model, dm.input_shape, dm.num_classes).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.optimizer["lr"])
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=EPOCHS)
    (x, y), (xv, yv) = ((s[0][:].to(device), s[1].to(device)) for s in (dm.train, dm.val))
    bs = cfg.data.batch_size
    if device != "cpu":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(EPOCHS):
        net.train()
        for idx in torch.randperm(len(y), device=device).split(bs):
            loss = F.cross_entropy(net(dm.inputs(x[idx])), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        schedule.step()
        net.eval()
        with torch.no_grad():
            correct = sum(
                (net(dm.inputs(xb)).argmax(1) == yb).sum()
                for xb, yb in zip(xv.split(bs), yv.split(bs), strict=True)
            )
    float(correct)  # waits for the GPU
    return time.perf_counter() - start, EPOCHS * len(y)


def cli_command(out: Path, overrides: list[str]) -> list[str]:
    """`python -m cnnexp` with every output (its MLflow store too) under `out`."""
    return [sys.executable, "-m", "cnnexp", f"paths.output_dir={out}", *overrides]


def runner_seconds(overrides: list[str], out: Path) -> tuple[float, float]:
    """(fit_seconds read back from its MLflow store, wall seconds) of a real CLI run into a new
    store under `out`."""
    cmd = cli_command(out, overrides)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=repo_root(), check=True, capture_output=True)
    wall = time.perf_counter() - start
    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return run.data.metrics["fit_seconds"], wall


def summary(name: str, ratios: list[float]) -> dict[str, float]:
    """{name: median, name_min, name_max} of per-round ratios."""
    return {name: statistics.median(ratios), f"{name}_min": min(ratios), f"{name}_max": max(ratios)}


def interleaved(tmp: Path, with_analysis: bool = True) -> dict[str, float]:
    """runner vs plain and (`with_analysis`) analysis vs none, ROUNDS rounds, each side once
    per round."""
    results: dict[str, float] = {}
    plain, runner, analysis, bare, analysis_wall, bare_wall = ([] for _ in range(6))
    for i in range(ROUNDS):
        runner.append(runner_seconds([*BENCH_ARGS, "analysis=none"], tmp / f"r{i}")[0])
        plain.append(plain_loop_seconds(BENCH_ARGS)[0])
        said = f"round {i + 1}/{ROUNDS}: runner {runner[-1]:.1f} s, plain {plain[-1]:.1f} s"
        if with_analysis:
            fit, wall = runner_seconds([*DEFAULT_SIZE, "analysis=none"], tmp / f"n{i}")
            bare.append(fit), bare_wall.append(wall)
            fit, wall = runner_seconds(DEFAULT_SIZE, tmp / f"a{i}")
            analysis.append(fit), analysis_wall.append(wall)
            said += f", analysis {analysis[-1]:.1f} s, none {bare[-1]:.1f} s"
        print(f"{said} (fit)", flush=True)
    results["runner_epoch_s"] = statistics.median(runner) / EPOCHS
    results["plain_epoch_s"] = statistics.median(plain) / EPOCHS
    results |= summary("runner_vs_plain", [r / p for r, p in zip(runner, plain, strict=True)])
    if with_analysis:
        ratios = [a / b for a, b in zip(analysis, bare, strict=True)]
        results |= summary("analysis_vs_none", ratios)
        walls = [a / b for a, b in zip(analysis_wall, bare_wall, strict=True)]
        results |= summary("analysis_run_vs_none", walls)
    return results


MODEL_PAIRS = [("mobilenet_small", "stacked3x3"), ("inception_no1x1", "inception_small")]


def model_speed_ratios(rounds: int = 7) -> dict[str, float]:
    """images/s of A over B per round, A and B timed back to back; median, min and max."""
    from cnnexp.models.facts import measure_throughput

    results: dict[str, float] = {}
    for a, b in MODEL_PAIRS:
        nets = {}
        for name in (a, b):
            cfg = typed_config(api.compose([f"model={name}"]))
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


STORE_OPEN = """
import sys, time
from pathlib import Path
from mlflow.tracking import MlflowClient
from cnnexp.tracking.template import seed_store
db = Path(sys.argv[1])
start = time.perf_counter()
if sys.argv[2] == "template":
    seed_store(db)
client = MlflowClient(f"sqlite:///{db}")
if client.get_experiment_by_name("bench") is None:
    client.create_experiment("bench", artifact_location=str(db.parent / "mlartifacts"))
print(time.perf_counter() - start)
"""


def store_open_seconds(db: Path, how: str = "template") -> float:
    """Seconds a fresh process takes to open `db` as a run does (after its imports); a new store
    is a copy of the template, or with how="migrations" made by MLflow itself."""
    done = subprocess.run(
        [sys.executable, "-c", STORE_OPEN, str(db), how],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(done.stdout.split()[-1])


def new_store_extra(tmp: Path) -> dict[str, float]:
    """Seconds a new store adds to a run's start over an existing one, ROUNDS interleaved rounds:
    copied from the template (what runs do) and, for scale, made by MLflow's migrations."""
    existing = tmp / "existing" / "mlflow.db"
    store_open_seconds(existing)  # made once, outside the rounds
    extra, migrated = [], []
    for i in range(ROUNDS):
        new = store_open_seconds(tmp / f"new{i}" / "mlflow.db")
        extra.append(new - store_open_seconds(existing))
        slow = store_open_seconds(tmp / f"migrated{i}" / "mlflow.db", "migrations")
        migrated.append(slow - store_open_seconds(existing))
    return summary("new_store_extra_s", extra) | summary("migrated_store_extra_s", migrated)


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


DATA_RUN = [  # a short run: the data path's memory, not training's, is measured
    "model=tiny",
    "trainer=cpu",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=20",
    "trainer.limit_val_batches=5",
    "trainer.limit_test_batches=5",
    "analysis=none",
]
FOLDER_IMAGES, FOLDER_SIZE = 12000, 128


def peak_rss_mb(overrides: list[str], out: Path) -> tuple[float, str]:
    """(peak resident memory in MB of one CLI run's process, its console text)."""
    out.mkdir(parents=True, exist_ok=True)
    console = out / "console.txt"
    cmd = cli_command(out, [*DATA_RUN, *overrides])
    with console.open("w") as stream:
        child = subprocess.Popen(cmd, cwd=repo_root(), stdout=stream, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{console.read_text()[-3000:]}")
    return usage.ru_maxrss / 1024, console.read_text()  # Linux: KiB


def loader_images_per_s(dm: data.TensorDataModule, loader) -> float:
    """Images/s of one pass over `loader`'s batches, each made the net's input (CPU)."""
    start, n = time.perf_counter(), 0
    for x, _ in loader:
        n += len(dm.inputs(x))
    return n / (time.perf_counter() - start)


def cifar10_files(root: Path) -> list[str]:
    """Writes CIFAR-10's files (60,000 random images, the real pickle format) under `root`;
    the overrides that train on them."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (60000, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, 60000).tolist()
    train, test = (pixels[:50000], labels[:50000]), (pixels[50000:], labels[50000:])
    write_cifar10(root, train, test, [f"class {i}" for i in range(10)])
    return ["data=cifar10", f"data.root={root}", "data.download=false", "data.verify=false"]


def bench_files(tmp: Path) -> dict[str, list[str]]:
    """CIFAR-10 and a folder of FOLDER_IMAGES PNGs written under `tmp`: overrides for each."""
    folder = write_png_folder(tmp / "pngs", FOLDER_IMAGES, FOLDER_SIZE, classes=10)
    return {
        "cifar": cifar10_files(tmp / "cifar"),
        "folder": [
            "data=image_folder",
            f"data.path={folder}",
            f"data.image_size={FOLDER_SIZE}",
            f"data.cache_dir={tmp / 'cache'}",
        ],
    }


def data_paths(tmp: Path, files: dict[str, list[str]]) -> dict[str, float]:
    """Peak memory per data-path mode over digits, and streamed vs in-memory images/s."""
    streamed = [*files["folder"], "data.num_workers=0"]  # everything in the measured process
    results, base = {}, peak_rss_mb(["data=digits"], tmp / "digits")[0]
    results["peak_mb_digits"] = base
    held = peak_rss_mb(files["cifar"], tmp / "c")[0]
    results["peak_mb_cifar10_in_memory_over_digits"] = held - base
    first, text = peak_rss_mb([*streamed, "data.in_memory=false"], tmp / "s1")
    decoded = re.search(r"decoded (\d+) images into cache .* in ([\d.]+) s", text)
    results["folder_decode_s"] = float(decoded.group(2))
    second, text = peak_rss_mb([*streamed, "data.in_memory=false"], tmp / "s2")
    results["folder_second_run_decoded_nothing"] = float("nothing decoded" in text)
    results["peak_mb_folder_streamed_over_digits"] = max(first, second) - base
    held = peak_rss_mb([*streamed, "data.in_memory=true"], tmp / "m")[0]
    results["peak_mb_folder_in_memory_over_digits"] = held - base
    results |= streamed_vs_in_memory(files["folder"])
    return results


GPU_RUN = [  # CIFAR-10 resident on the GPU, fp32 on both sides, no analysis
    "model=stacked3x3",
    "trainer=gpu",
    "trainer.precision=32-true",
    "data.device=gpu",
    "data.augment=[]",
    "data.batch_size=512",
    f"trainer.max_epochs={EPOCHS}",
    "analysis=none",
]


def gpu_runner_vs_raw(tmp: Path, cifar: list[str]) -> dict[str, float]:
    """Training images/s of the runner (its fit time) over a raw PyTorch loop, both with the
    data resident on the GPU, ROUNDS interleaved rounds; {} without a CUDA device."""
    if not torch.cuda.is_available():
        print("no CUDA device: no GPU figures", flush=True)
        return {}
    runner, raw = [], []
    for i in range(ROUNDS):
        runner.append(runner_seconds([*cifar, *GPU_RUN], tmp / f"g{i}")[0])
        seconds, images = plain_loop_seconds([*cifar, *GPU_RUN], "cuda")
        raw.append(seconds)
    return {
        "gpu_images_per_s_runner": images / statistics.median(runner),
        "gpu_images_per_s_raw": images / statistics.median(raw),
        **summary("gpu_runner_vs_raw", [p / r for r, p in zip(runner, raw, strict=True)]),
    }


def streamed_vs_in_memory(folder: list[str]) -> dict[str, float]:
    """Images/s of the folder's training batches streamed (data.num_workers=2) and in memory,
    one pass each per round, ROUNDS interleaved rounds."""
    modules = {}
    for mode, extra in (("in_memory", "true"), ("streamed", "false")):
        cfg = typed_config(api.compose([*folder, f"data.in_memory={extra}", "data.num_workers=2"]))
        dm = data.build(cfg.data)
        modules[mode] = (dm, dm.train_dataloader())  # workers persist across passes
    speeds: dict[str, list[float]] = {mode: [] for mode in modules}
    for _ in range(ROUNDS):
        for mode, (dm, loader) in modules.items():
            speeds[mode].append(loader_images_per_s(dm, loader))
    ratios = [s / m for s, m in zip(speeds["streamed"], speeds["in_memory"], strict=True)]
    return {
        "images_per_s_in_memory": statistics.median(speeds["in_memory"]),
        "images_per_s_streamed": statistics.median(speeds["streamed"]),
        **summary("streamed_vs_in_memory", ratios),
    }


def main() -> None:
    out = repo_root() / "outputs" / "bench.json"
    part = sys.argv[1] if len(sys.argv) > 1 else None  # data | runner | None: everything
    results = json.loads(out.read_text()) if part and out.exists() else {}
    if part == "runner":  # runner vs plain and the new store only: minutes, not the hour
        with tempfile.TemporaryDirectory() as tmp:
            results |= interleaved(Path(tmp) / "runs", with_analysis=False)
            results |= new_store_extra(Path(tmp) / "stores")
        return report(results, out)
    only_data = part == "data"
    with tempfile.TemporaryDirectory() as tmp:
        files = bench_files(Path(tmp))
        if not only_data:
            results |= interleaved(Path(tmp) / "runs")
        results |= data_paths(Path(tmp), files)
        results |= gpu_runner_vs_raw(Path(tmp), files["cifar"])
    if not only_data:
        results |= model_speed_ratios()
        results["help_s"] = help_seconds()
        with tempfile.TemporaryDirectory() as tmp:
            results |= new_store_extra(Path(tmp))
    report(results, out)


def report(results: dict[str, float], out: Path) -> None:
    """Print every figure with the targets; write them to `out` (outputs/bench.json)."""
    for key, value in results.items():
        print(f"{key:>42}: {value:.3f}")
    print(
        "target: runner_vs_plain <= 1.05, analysis_vs_none <= 1.10, help_s <= 1.0, "
        "new_store_extra_s <= 2, "
        "peak_mb_cifar10_in_memory_over_digits <= 350, peak_mb_folder_streamed_over_digits "
        f"<= 300, gpu_runner_vs_raw >= 0.95 ({torch.get_num_threads()} threads)"
    )
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
