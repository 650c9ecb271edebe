"""trainer=ddp_sim: two CPU processes (gloo) train one net; rank 0 alone records one MLflow run,
and the logged validation accuracy is that of the whole validation set (synced across ranks)."""

from __future__ import annotations

import pytest
import torch

from cnnexp import data, models
from tests.conftest import all_runs, compose_cfg, run_cli, store

ARGS = ["model=tiny", "data=digits", "analysis=none", "trainer.max_epochs=2"]
ARGS += ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


@pytest.mark.slow
def test_two_process_ddp_gives_one_run_with_synced_metrics(out) -> None:
    result = run_cli("trainer=ddp_sim", *ARGS, out=out)
    assert result.returncode == 0, result.stderr[-3000:]
    [run_dir] = out.glob("runs/*/*")  # one Hydra output dir for both processes
    assert (run_dir / "train_ddp_process_1.log").is_file()  # rank 1 ran, and logged there
    [run] = all_runs(out)  # rank 0 alone opened a run
    assert run.info.status == "FINISHED"
    history = store(out).get_metric_history(run.info.run_id, "val_acc")
    assert sorted(m.step for m in history) == [0, 1]

    [ckpt] = run_dir.glob("checkpoints/best-*.ckpt")
    epoch = torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"]
    logged = {m.step: m.value for m in history}[epoch]
    cfg = compose_cfg(*ARGS)
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


def test_data_module_shards_batches_per_rank_under_ddp() -> None:
    cfg = compose_cfg("data=digits")
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
def test_ddp_that_relaunches_its_command_is_refused_inside_a_sweep(out) -> None:
    result = run_cli("-m", "trainer=ddp_sim", "seed=0,1", *ARGS, out=out)
    assert result.returncode == 2
    lines = [x for x in result.stderr.splitlines() if x.startswith("cnnexp: error: job ")]
    assert len(lines) == 2 and all("failed: trainer.strategy: DDP" in x for x in lines)
    assert "re-running the command line" in lines[0]
    assert all_runs(out) == []
