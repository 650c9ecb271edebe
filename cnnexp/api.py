"""The Python API: `cnnexp.run`, `cnnexp.compose`, `cnnexp.inspect`, the CLI's third door.

Each composes the packaged conf/ exactly as `python -m cnnexp OVERRIDES` does and runs the same
code; a user mistake is raised as `CnnexpError` whose text is the line the CLI prints after
"cnnexp: error: ", a bug as its own exception.

    result = cnnexp.run(["model=tiny", "data=digits", "trainer.max_epochs=2"])
    result.metrics["test_acc"], result.curves["val_acc"], result.output_dir
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf, open_dict

from cnnexp import schema, tracking
from cnnexp.errors import ConfigError, one_line
from cnnexp.layers import LayerTable, layer_table
from cnnexp.paths import config_dir, job_output_dir
from cnnexp.tracking.mlflow_run import Trained
from cnnexp.train import train_run


class CnnexpError(ConfigError):
    """A user mistake; str() is the one line the CLI prints. The original is its __cause__."""


@dataclass(frozen=True)
class Result:
    """What one run recorded, read back from its MLflow store."""

    run_id: str | None  # None for a dry run (trainer.fast_dev_run)
    status: str | None  # FINISHED, ...
    metrics: dict[str, float]  # each metric's last value
    curves: dict[str, list[tuple[int, float]]]  # each metric's (step, value) points; step = epoch
    output_dir: Path  # checkpoints and other files of the run
    config: DictConfig  # the composed config, resolved, read-only
    tracking_uri: str
    url: str | None  # the run's page in the MLflow UI (`make ui`)


@contextmanager
def user_errors() -> Iterator[None]:
    """Raise a user mistake inside as CnnexpError(the CLI's line) from it; bugs pass unchanged."""
    try:
        yield
    except Exception as err:
        line = one_line(err)
        if line is None:
            raise
        raise CnnexpError(line) from err


def compose_job(overrides: Sequence[str] = ()) -> DictConfig:
    """The root config as the CLI composes it, plus what a CLI job has: HydraConfig set (so
    `${hydra:...}` resolves) and its output dir, hydra.run.dir resolved now (a fresh ${uid:} per
    call). Errors are Hydra's and OmegaConf's own; `compose` turns them into CnnexpError."""
    schema.register()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = hydra_compose("config", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = cfg.hydra.run.dir
        cfg.hydra.job.num = 0
        HydraConfig.instance().set_config(cfg)
        del cfg["hydra"]
    return cfg


def compose(overrides: Sequence[str] | None = None) -> DictConfig:
    """The config `cnnexp OVERRIDES` would run. HydraConfig stays set to this job, as in a CLI
    process, so `cnnexp.train.train(cfg)` runs it in-process."""
    with user_errors():
        return compose_job(overrides or [])


@contextmanager
def job(overrides: Sequence[str] | None) -> Iterator[DictConfig]:
    """compose_job for the length of the block; HydraConfig is as it was afterwards."""
    before = HydraConfig.instance().cfg
    try:
        yield compose_job(overrides or [])
    finally:
        HydraConfig.instance().cfg = before


def run(overrides: Sequence[str] | None = None) -> Result:
    """Train and test as `cnnexp OVERRIDES` does; return what the run recorded."""
    with user_errors(), job(overrides) as cfg:
        if cfg.task != "train":
            other = "cnnexp.inspect(overrides)" if cfg.task == "inspect" else "the CLI"
            raise ConfigError(
                f"task: cnnexp.run trains (task=train); for task={cfg.task} use {other}"
            )
        job_output_dir(cfg).mkdir(parents=True, exist_ok=True)  # as Hydra makes it, before the task
        trained = train_run(cfg)
        config = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    OmegaConf.set_readonly(config, True)
    return read_back(trained, config)


def inspect(overrides: Sequence[str] | None = None) -> LayerTable:
    """The layer table `cnnexp task=inspect OVERRIDES` prints (print() it), without printing."""
    with user_errors(), job(overrides) as cfg:
        return layer_table(cfg)


def read_back(trained: Trained, config: DictConfig) -> Result:
    """The Result of a finished training, its metrics and curves as its store holds them."""
    if trained.run_id is None:  # a dry run records nothing
        return Result(None, None, {}, {}, trained.output_dir, config, trained.tracking_uri, None)
    client = MlflowClient(trained.tracking_uri)
    found = client.get_run(trained.run_id)
    curves = {key: curve(client, trained.run_id, key) for key in found.data.metrics}
    return Result(
        run_id=trained.run_id,
        status=found.info.status,
        metrics=dict(found.data.metrics),
        curves=curves,
        output_dir=trained.output_dir,
        config=config,
        tracking_uri=trained.tracking_uri,
        url=tracking.ui_url(trained.tracking_uri, found.info.experiment_id, trained.run_id),
    )


def curve(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    """A metric's (step, value) points in step order."""
    history = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
    return [(m.step, m.value) for m in history]
