"""trainer=ddp_sim: two CPU processes (gloo) train one net with the default analysis; rank 0
alone records one MLflow run, with what a single process records, and the logged validation
accuracy is that of the whole validation set (synced across ranks). A rank that fails ends the
training with one line naming it (cnnexp/distributed.py), and the run can be resumed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.fabric.plugins.environments import LightningEnvironment
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

from cnnexp import data, distributed, models
from cnnexp.distributed import RankFailed, RankLauncher, config_flags, failure_cause
from cnnexp.report.explorer import logged_images
from tests.conftest import (
    ROOT,
    all_runs,
    cli_in_process,
    error_lines,
    store,
    typed_cfg,
)

SMALL = ["analysis.erf_samples=2", "analysis.n_images=2", "analysis.max_channels=4"]
SMALL += ["analysis.health_images=32", "analysis.patch_images=64", "analysis.top_k=2"]
ARGS = ["model=tiny", "data=digits", "trainer.max_epochs=2", *SMALL]
ARGS += ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def recorded(out: Path, run) -> tuple[dict[str, list[int]], set[tuple[str, int]]]:
    """A run's metrics with the steps each was logged at, and its (image key, step) pairs."""
    client, run_id = store(out), run.info.run_id
    steps = {
        key: sorted(m.step for m in client.get_metric_history(run_id, key))
        for key in run.data.metrics
    }
    folder = Path(client.download_artifacts(run_id, "images", str(out / "images")))
    images = {(key, step) for key, at in logged_images(folder).items() for step in at}
    return steps, images


@pytest.mark.slow
def test_two_process_ddp_records_what_one_process_does_and_eval_under_ddp_opens_one_run(
    out,
) -> None:
    result = cli_in_process("trainer=ddp_sim", *ARGS, out=out)  # this process is rank 0
    assert result.returncode == 0, result.stderr[-3000:]
    [run_dir] = out.glob("runs/*/*")  # one Hydra output dir for both processes
    assert (run_dir / "train_ddp_process_1.log").is_file()  # rank 1 ran, and logged there
    [run] = all_runs(out)  # rank 0 alone opened a run
    assert run.info.status == "FINISHED"
    history = store(out).get_metric_history(run.info.run_id, "val_acc")
    assert sorted(m.step for m in history) == [0, 1]
    single = out.parent / "single"
    alone = cli_in_process("trainer=cpu", *ARGS, out=single)  # one process: this one
    assert alone.returncode == 0, alone.stderr[-3000:]
    [one] = all_runs(single)
    (metrics, images), (single_metrics, single_images) = recorded(out, run), recorded(single, one)
    assert metrics == single_metrics  # the same keys, each step once
    assert all(len(steps) == len(set(steps)) for steps in metrics.values())
    assert images == single_images and ("confusion_matrix", 2) in images
    artifacts = {a.path for a in store(out).list_artifacts(run.info.run_id)}
    assert {"explorer.html", "checkpoints", "receptive_field.txt"} <= artifacts

    [ckpt] = run_dir.glob("checkpoints/best-*.ckpt")
    epoch = torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"]
    logged = {m.step: m.value for m in history}[epoch]
    cfg = typed_cfg(*ARGS)
    dm = data.build(cfg.data)
    net = models.build(cfg.model, dm.input_shape, dm.num_classes)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    net.load_state_dict(
        {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
    )
    x, y = dm.inputs(dm.val[0][:]), dm.val[1]
    with torch.no_grad():
        whole = (net.eval()(x).argmax(1) == y).float().mean().item()
    # one rank alone would see half the images; DistributedSampler pads by at most one image
    assert logged == pytest.approx(whole, abs=1.5 / len(y))

    # eval of the single-process run with a DDP trainer: one eval run, not one per rank
    evaluate = ["task=eval", f"resume={one.info.run_id}", "data=digits", "trainer=ddp_sim"]
    result = cli_in_process(*evaluate, out=single)
    assert result.returncode == 0, result.stderr[-3000:]
    evals = [r for r in all_runs(single) if r.data.tags.get("cnnexp.kind") == "eval"]
    assert len(evals) == 1 and evals[0].info.status == "FINISHED"
    assert "test_acc" in evals[0].data.metrics
    assert (Path(evals[0].data.tags["output_dir"]) / "train_ddp_process_1.log").is_file()


def test_data_module_shards_batches_per_rank_under_ddp() -> None:
    cfg = typed_cfg("data=digits")
    dm = data.build(cfg.data)

    class FakeTrainer:  # the two attributes the data module reads from Lightning's Trainer
        world_size, global_rank, training = 2, 0, False

    seen = []
    for rank in (0, 1):
        FakeTrainer.global_rank = rank
        dm.trainer = FakeTrainer()
        seen.append(torch.cat([y for _, y in dm.val_dataloader()]))
    dm.trainer = None
    whole = torch.cat([y for _, y in dm.val_dataloader()])
    assert len(seen[0]) == len(seen[1]) and len(seen[0]) + len(seen[1]) - len(whole) in (0, 1)
    counts = torch.bincount(torch.cat(seen), minlength=10) - torch.bincount(whole, minlength=10)
    assert counts.min() == 0 and counts.sum() <= 1  # every image once (one may repeat as padding)


@pytest.mark.slow
def test_a_sweep_of_two_seeds_under_ddp_gives_two_finished_runs(out) -> None:
    sweep = ["-m", "trainer=ddp_sim", "seed=0,1", *ARGS, "trainer.max_epochs=1"]
    result = cli_in_process(*sweep, out=out)  # each job's rank 0 in turn is this process
    assert result.returncode == 0, result.stderr[-3000:]
    runs = all_runs(out)
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1"]
    assert all(r.info.status == "FINISHED" for r in runs)
    for run in runs:  # each job's rank 1 trained in that job's output dir, with its seed
        assert (Path(run.data.tags["output_dir"]) / "train_ddp_process_1.log").is_file()
        steps = store(out).get_metric_history(run.info.run_id, "val_acc")
        assert [m.step for m in steps] == [0]


@pytest.mark.parametrize("strategy", ["ddp_spawn", "ddp_notebook"])
def test_strategies_that_start_workers_inside_the_process_are_refused(out, strategy) -> None:
    result = cli_in_process("trainer=ddp_sim", f"trainer.strategy={strategy}", *ARGS, out=out)
    assert result.returncode == 2
    [line] = error_lines(result.stderr)
    assert line.startswith(f"cnnexp: error: trainer.strategy: '{strategy}' starts its workers")
    assert "(allowed: ddp" in line and all_runs(out) == []


def kill_once_paused(marker: Path, sig: int, timeout_s: float = 240) -> None:
    """Send `sig` to the process that wrote its pid into `marker` (tests/helpers.py's PauseAt),
    once it has: run in a thread while this process runs the paused rank's rank 0."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pid = marker.read_text() if marker.exists() else ""  # "": created, not yet written
        if pid:
            os.kill(int(pid), sig)
            return
        time.sleep(0.05)


@pytest.mark.slow
def test_rank_1_killed_mid_fit_ends_the_run_failed_with_one_line_and_resume_finishes_it(
    out,
) -> None:
    marker = out.parent / "rank1-paused"
    pause = ["+callbacks.pause._target_=tests.helpers.PauseAt", f"+callbacks.pause.marker={marker}"]
    killer = threading.Thread(target=kill_once_paused, args=(marker, signal.SIGKILL))
    killer.start()  # rank 0 is this process, in the run below; rank 1 waits in epoch 1
    result = cli_in_process("trainer=ddp_sim", *ARGS, *pause, "+callbacks.pause.rank=1", out=out)
    killer.join()
    stderr = result.stderr
    assert result.returncode == 1, stderr[-3000:]
    [run] = all_runs(out)
    [line] = error_lines(stderr)
    assert line == (
        f"cnnexp: error: rank 1 of 2 was killed by SIGKILL; run {run.info.run_id} is FAILED; "
        f"continue it with: python -m cnnexp <same overrides> resume={run.info.run_id}"
    )
    assert "Traceback" not in stderr and run.info.status == "FAILED"
    assert run.data.tags["error"].startswith("RankFailed: rank 1 of 2 was killed by SIGKILL")

    resumed = cli_in_process("trainer=ddp_sim", *ARGS, f"resume={run.info.run_id}", out=out)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    [run] = all_runs(out)
    assert run.info.status == "FINISHED"
    for key in ("train_loss", "val_loss", "val_acc"):
        assert [m.step for m in store(out).get_metric_history(run.info.run_id, key)] == [0, 1]


@pytest.mark.slow
def test_sigterm_to_rank_0_stops_every_rank_and_the_run_is_killed(out) -> None:
    marker = out.parent / "rank0-paused"
    pause = ["+callbacks.pause._target_=tests.helpers.PauseAt", f"+callbacks.pause.marker={marker}"]
    killer = threading.Thread(target=kill_once_paused, args=(marker, signal.SIGTERM))
    killer.start()  # to this process, rank 0, while Lightning's SIGTERM handler is set: as SLURM
    result = cli_in_process("trainer=ddp_sim", *ARGS, *pause, "+callbacks.pause.rank=0", out=out)
    killer.join()
    stdout, stderr = result.stdout, result.stderr
    assert result.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    [run] = all_runs(out)
    assert run.info.status == "KILLED" and "Traceback" not in stdout + stderr
    [warning] = [x for x in stdout.splitlines() if "interrupted: marked KILLED" in x]  # logged
    assert warning.endswith(
        f"continue it with: python -m cnnexp <same overrides> resume={run.info.run_id}"
    )


@pytest.mark.slow
def test_rank_1_raising_ends_the_run_failed_with_one_line_naming_its_error(out) -> None:
    fail = ["+callbacks.boom._target_=tests.helpers.FailAtEpoch", "+callbacks.boom.rank=1"]
    result = cli_in_process("trainer=ddp_sim", *ARGS, *fail, out=out)
    assert result.returncode == 1, result.stderr[-3000:]
    [run] = all_runs(out)
    assert error_lines(result.stderr) == [
        "cnnexp: error: rank 1 of 2 failed: RuntimeError: planned failure at epoch 0; "
        f"run {run.info.run_id} is FAILED; continue it with: python -m cnnexp <same overrides> "
        f"resume={run.info.run_id}"
    ]
    assert run.info.status == "FAILED" and "Traceback" not in result.stderr
    [log] = out.glob("runs/*/*/train_ddp_process_1.log")
    assert "planned failure at epoch 0" in log.read_text()  # rank 1's traceback went there


def launcher(tmp_path: Path, child: str, **more) -> RankLauncher:
    """A RankLauncher for 2 local ranks whose rank 1 runs the Python code `child`."""
    base = _SubprocessScriptLauncher(LightningEnvironment(), num_processes=2, num_nodes=1)
    return RankLauncher(
        base,
        tmp_path,
        ending=lambda: "run r is FAILED",
        abandon=lambda line: (tmp_path / "abandoned").write_text(line),
        command=lambda rank: ([sys.executable, "-c", child], str(tmp_path)),
        **more,
    )


KILL_ITSELF = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"


def test_a_child_that_dies_turns_rank_0s_broken_collective_into_rank_failed(tmp_path) -> None:
    ours = launcher(tmp_path, KILL_ITSELF)

    def fit() -> None:  # rank 0's collective breaks once the child is gone
        ours.a_rank_failed.wait()
        raise RuntimeError("[pair.cc:561] Connection closed by peer [127.0.0.1]:1")

    before = dict(os.environ)
    with pytest.raises(RankFailed) as stopped:
        try:
            ours.launch(fit)
        finally:
            ours.close(failing=True)
    assert str(stopped.value) == "rank 1 of 2 was killed by SIGKILL; run r is FAILED"
    assert dict(os.environ) == before  # the next job of a sweep starts its own ranks


def test_rank_0_stuck_after_a_child_failed_is_ended_within_the_fallback(tmp_path) -> None:
    script = (
        "import sys, threading; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
        "from tests.test_ddp import launcher; "
        "launcher(Path(sys.argv[2]), sys.argv[3], fallback_s=0.5)"
        ".launch(threading.Event().wait)"  # stuck, as in a collective no error reaches
    )
    child = "import sys; sys.exit(3)"
    done = subprocess.run(
        [sys.executable, "-c", script, str(ROOT), str(tmp_path), child],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    line = "rank 1 of 2 exited with code 3; run r is FAILED"
    assert done.returncode == 1 and done.stderr.strip() == f"cnnexp: error: {line}"
    assert (tmp_path / "abandoned").read_text() == line


def test_failure_cause_names_the_written_line_the_signal_or_the_code(tmp_path) -> None:
    assert failure_cause(tmp_path, 1, -signal.SIGKILL) == "was killed by SIGKILL"
    assert failure_cause(tmp_path, 1, 2) == "exited with code 2"
    distributed.write_failure(tmp_path, 1, "ValueError: bad")
    assert failure_cause(tmp_path, 1, 1) == "failed: ValueError: bad"


def test_children_keep_the_config_flags_and_nothing_else_of_the_command_line() -> None:
    argv = ["-m", "--config-dir", "/c", "-cn=other", "seed=0,1", "model=tiny"]
    assert config_flags(argv) == ["--config-dir", "/c", "-cn=other"]


def test_a_rank_started_by_rank_0_leaves_the_process_group_at_the_end_of_its_block() -> None:
    # a rank that exits with gloo's threads alive can abort in finalization (SIGABRT, CI)
    child = SimpleNamespace(creates_processes_externally=True)  # LOCAL_RANK set: a child
    strategy = SimpleNamespace(launcher=_SubprocessScriptLauncher(child, 2, 1))
    trainer = SimpleNamespace(strategy=strategy, received_sigterm=False)
    store_ = torch.distributed.HashStore()
    torch.distributed.init_process_group("gloo", store=store_, rank=0, world_size=1)
    try:
        with distributed.watched(trainer, Path(".")):
            torch.distributed.barrier()
        assert not torch.distributed.is_initialized()
    finally:
        distributed.leave_process_group()
