"""The MLflow side of one training: the store opened and a resume located before any data
loads, then, around fit and test, a run whose status tells the truth, its logger, the analysis
callbacks, and what is recorded once the test ran (speed, best checkpoint, explorer page).

`tracked_run` returns a RecordedRun, a DryRun where nothing is recorded (Lightning's
fast_dev_run), or on every DDP rank but 0 a RankRun: the same callbacks, so each collective is
entered by every rank, and nothing recorded; cnnexp/train.py writes fit and test once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning as L
from mlflow.tracking import MlflowClient

from cnnexp import models, tracking
from cnnexp.analysis.architecture import model_figure
from cnnexp.analysis.callbacks import build_callbacks
from cnnexp.analysis.fit import BEST_EPOCH, FIT_TAG, REASON_TAG, chance_accuracy, log_fit_diagnosis
from cnnexp.data import TensorDataModule
from cnnexp.distributed import global_rank
from cnnexp.errors import resume_hint
from cnnexp.models.facts import flops_per_image, measure_throughput, n_params
from cnnexp.report.explorer import ARTIFACT, log_explorer
from cnnexp.resume import StopOnSigterm, TrainingStarted, locate, reopen
from cnnexp.schema import Config
from cnnexp.tracking.dashboard import add_run_images
from cnnexp.tracking.logger import RunLogger
from cnnexp.tracking.mlflow_run import Trained


def tracked_run(conf: Config, composed: dict, out: Path) -> RecordedRun | DryRun:
    """The run that records this training (an unusable store or resume stops here, before any
    data loads), or a DryRun where nothing is recorded."""
    if global_rank() != 0:
        return RankRun(conf, composed, out)
    if conf.trainer.fast_dev_run:
        return DryRun(conf, out)
    return RecordedRun(conf, composed, out)


class DryRun:
    """Fit and test run; nothing is recorded."""

    logger, callbacks = False, []

    def __init__(self, conf: Config, out: Path) -> None:
        self.conf, self.out, self.ckpt_path = conf, out, None

    @contextmanager
    def recording(self, module: models.Classifier, dm: TensorDataModule) -> Iterator[None]:
        yield

    def record(self, trainer: L.Trainer, module, dm, best: str | None, seconds: float) -> None:
        """Nothing to record."""

    def ending(self) -> str:
        return "nothing was recorded"

    def abandon(self, line: str) -> None:
        """Nothing to mark."""

    def trained(self) -> Trained:
        uri = tracking.resolve_tracking_uri(self.conf)
        if self.conf.trainer.fast_dev_run:
            print(f"\nfast_dev_run: fit, validation and test ran; nothing recorded in {uri}")
        return Trained(None, uri, self.out, float("nan"), float("nan"))


class RankRun(DryRun):
    """A DDP rank other than 0: the analysis callbacks of rank 0 (every collective is entered
    by every rank; they record nothing here) and, for `resume=`, the same checkpoint as rank 0
    (read from the store before this rank joins the others, so before rank 0 reopens the run);
    it opens no run."""

    def __init__(self, conf: Config, composed: dict, out: Path) -> None:
        super().__init__(conf, out)
        if conf.resume:
            client = MlflowClient(tracking.resolve_tracking_uri(conf))
            self.ckpt_path = locate(conf, composed, client).ckpt_path

    @contextmanager
    def recording(self, module: models.Classifier, dm: TensorDataModule) -> Iterator[None]:
        self.callbacks = build_callbacks(self.conf.analysis, dm, resumed=self.ckpt_path is not None)
        yield


class RecordedRun:
    """One MLflow run, new or resumed (`resume=`)."""

    def __init__(self, conf: Config, composed: dict, out: Path) -> None:
        self.conf, self.composed, self.out = conf, composed, out
        self.uri, self.experiment_id = tracking.ensure_experiment(conf)
        self.client = MlflowClient(self.uri)
        self.resume = locate(conf, composed, self.client) if conf.resume else None
        self.ckpt_path = self.resume.ckpt_path if self.resume else None
        self.test_acc, self.speed, self.facts = float("nan"), {}, {}

    @contextmanager
    def recording(self, module: models.Classifier, dm: TensorDataModule) -> Iterator[None]:
        """While the block runs: a RUNNING run (a resumed one once it starts), its logger and
        callbacks; after it, its true status (cnnexp/tracking: run_status)."""
        conf, client, resume, resumed = self.conf, self.client, self.resume, self.resume is not None
        if resume:
            self.run_id = resume.run_id
        else:
            self.run_id = tracking.open_run(
                client, self.experiment_id, conf, self.composed, self.out
            )
        started = TrainingStarted(lambda: reopen(client, resume, self.composed, self.out))
        began = (lambda: started.started) if resumed else (lambda: True)
        status = tracking.run_status(client, self.run_id, conf, self.hint, began, self.out)
        with StopOnSigterm() as sigterm, status:
            self.logger = RunLogger(self.uri, self.run_id, resumed=resumed)
            analysis = build_callbacks(conf.analysis, dm, resumed=resumed)
            self.callbacks = [*([started] if resumed else []), sigterm, *analysis]
            self.facts = {"n_params": n_params(module.net)}
            self.facts["flops_per_image"] = flops_per_image(module.net, dm.input_shape)
            self.logger.log_metrics(self.facts, step=0)
            if not resumed:
                picture = model_figure(conf.model, module.net, dm.input_shape)
                client.log_figure(self.run_id, picture, "architecture.png")
            yield

    @property
    def hint(self) -> str:
        return resume_hint(self.run_id)

    def ending(self) -> str:
        """What becomes of the run when another rank fails, and how to continue it."""
        return f"run {self.run_id} is FAILED; {self.hint}"

    def abandon(self, line: str) -> None:
        """The run FAILED with `line` as its error, for a process about to end without
        unwinding (another rank failed and this one is stuck in a collective)."""
        self.client.set_tag(self.run_id, "error", line[:5000])
        self.client.set_terminated(self.run_id, "FAILED")

    def record(
        self,
        trainer: L.Trainer,
        module: models.Classifier,
        dm: TensorDataModule,
        best: str | None,
        seconds: float,
    ) -> None:
        """What the run records once its test ran: test_acc (already logged), the fit
        diagnosis, training and inference speed, the best checkpoint, the explorer page, the
        dashboard's image keys."""
        self.test_acc = float(trainer.callback_metrics.get("test_acc", float("nan")))
        chance = chance_accuracy(dm.val[1])
        log_fit_diagnosis(self.client, self.run_id, self.logger, chance, trainer.current_epoch)
        batch = dm.inputs(dm.train[0][: dm.batch_size])
        batch = batch.contiguous(memory_format=module.memory_format)
        for kind in ("train", "infer"):
            measured = measure_throughput(module.net, batch, kind == "train")
            self.speed |= measured.metrics(f"throughput_{kind}")
        metrics = {"fit_seconds": seconds, **self.speed}
        self.logger.log_metrics(metrics, step=trainer.current_epoch)
        if best and self.conf.logger.log_checkpoint:
            self.client.log_artifact(self.run_id, best, "checkpoints")
        if self.conf.analysis.enabled:  # last: the page shows everything the run recorded
            log_explorer(self.client, self.run_id)
        add_run_images(self.client, self.run_id)  # the dashboard gains this run's image keys
        self.seconds = seconds

    def trained(self) -> Trained:
        """What the run produced, as its store holds it; its summary printed."""
        val = [m.value for m in self.client.get_metric_history(self.run_id, "val_acc")]
        best_val = max(val, default=float("nan"))
        run = self.client.get_run(self.run_id).data
        print(
            f"\n{self.conf.logger.run_name}: val_acc {best_val:.4f} (best)  test_acc "
            f"{self.test_acc:.4f}  params {self.facts['n_params']:,}  FLOPs/image "
            f"{self.facts['flops_per_image'] / 1e6:.2f} M  fit {self.seconds:.1f} s  "
            f"{self.speed['throughput_train']:,.0f} img/s training\n"
            + fit_line(run.tags, run.metrics)
            + tracking.where_text(
                self.conf.logger.experiment_name,
                self.uri,
                self.experiment_id,
                self.run_id,
                self.out,
                ARTIFACT if self.conf.analysis.enabled else "",
            )
        )
        return Trained(self.run_id, self.uri, self.out, best_val, self.test_acc)


def fit_line(tags: dict[str, str], metrics: dict[str, float]) -> str:
    """`  fit: <label> (<reason>); best epoch (highest val_acc) <n>` and a line break, or
    nothing where the run has no diagnosis."""
    if FIT_TAG not in tags:
        return ""
    best = f"; {BEST_EPOCH} {metrics['best_epoch']:.0f}" if "best_epoch" in metrics else ""
    return f"  fit: {tags[FIT_TAG]} ({tags.get(REASON_TAG, '')}){best}\n"
