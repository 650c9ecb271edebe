"""task=eval and task=predict: apply a trained net, rebuilt from its checkpoint alone.

`resume=<run id>` takes the best checkpoint the run logged (artifact `checkpoints/*.ckpt`, best
by val_acc: the weights its test_acc was measured with; of several, which a resumed run logs,
the newest, as ModelCheckpoint(save_top_k=1) only writes one when val_acc improved), else the
run's latest state; `resume=<checkpoint file>` takes that file. Checkpoints load with
weights_only=True. The net is rebuilt from the model config the checkpoint carries (see
`inference_facts`), so neither task needs the training's `model=`.

Inputs are normalised with the mean/std the net was trained with (stored in the checkpoint), not
with statistics of the new data: the net learnt on inputs scaled that way.

eval: a new MLflow run in the trained run's experiment, its child (mlflow.parentRunId; tags
cnnexp.kind=eval, cnnexp.evaluates=<run id>, cnnexp.checkpoint), with test_loss, test_acc and
what training's MistakesLogger logs (test_class_acc/<class>, confusion_matrix, misclassified);
params data.* (as applied) and model.* (the checkpoint's). predict: a CSV, no MLflow run.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig
from torchvision.datasets.folder import IMG_EXTENSIONS

from cnnexp import data, distributed, models, tracking
from cnnexp.analysis.mistakes import MistakesLogger
from cnnexp.checkpoints import check_stored_net, read_checkpoint
from cnnexp.data.folder import decode  # the image_folder source's own reading
from cnnexp.data.images import normalise
from cnnexp.errors import ConfigError
from cnnexp.paths import job_output_dir
from cnnexp.resume import find_run, latest_checkpoint
from cnnexp.schema import Config, DataConf
from cnnexp.tracking.logger import RunLogger
from cnnexp.tracking.mlflow_run import KIND_TAG, open_store
from cnnexp.validate import check_applies, validate_applying

EVALUATES_TAG = "cnnexp.evaluates"  # on an eval run: the run whose net it tested
CHECKPOINT_TAG = "cnnexp.checkpoint"  # on an eval run: the checkpoint it loaded
PREDICT_BATCH = 256  # images per forward pass of task=predict


@dataclass(frozen=True)
class TrainedNet:
    module: models.Classifier  # in eval mode, on the CPU
    facts: dict  # inference_facts: model config, input shape, classes, mean/std, data name
    source: str  # the checkpoint file, or `runs:/<run id>/<artifact>`
    run: Run | None  # the run that trained it; None when predict read a file without a store


def trained_net(conf: Config, client: MlflowClient | None) -> TrainedNet:
    """The net `resume=` names; without a store (`client` None) resume must be a file."""
    if client is None:
        path = Path(str(conf.resume)).expanduser()
        return _rebuilt(read_checkpoint(path), str(path), None)
    run, given = find_run(client, str(conf.resume))
    state, source = (read_checkpoint(given), str(given)) if given else run_checkpoint(client, run)
    return _rebuilt(state, source, run)


def run_checkpoint(client: MlflowClient, run: Run) -> tuple[dict, str]:
    """(state, source) of the best checkpoint `run` logged (the newest of several), else of its
    latest state."""
    run_id = run.info.run_id
    logged = [a.path for a in client.list_artifacts(run_id, "checkpoints")]
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # the error stays one line
    with tempfile.TemporaryDirectory() as tmp:
        states = {
            path: read_checkpoint(Path(client.download_artifacts(run_id, path, tmp)))
            for path in logged
            if path.endswith(".ckpt")
        }
    if states:
        newest = max(states, key=lambda path: states[path].get("global_step", 0))
        return states[newest], f"runs:/{run_id}/{newest}"
    latest = latest_checkpoint(run)
    if not latest.is_file():
        raise ConfigError(
            f"resume: run {run_id} logged no checkpoint and has no latest state {latest} "
            "(allowed: a run that trained a net with checkpoints)"
        )
    return read_checkpoint(latest), str(latest)


def _rebuilt(state: dict, source: str, run: Run | None) -> TrainedNet:
    model, facts = check_stored_net(state, source)
    classes = len(facts["class_names"])
    net = models.build(model, tuple(facts["input_shape"]), classes)
    module = models.Classifier(net, classes, inference=facts, channels_last=model.channels_last)
    try:
        module.load_state_dict(state["state_dict"])
    except (RuntimeError, TypeError, ValueError) as err:  # missing, extra or misshapen tensors
        raise ConfigError(
            f"resume: checkpoint {source}: its weights do not fit the net its config describes "
            f"({' '.join(str(err).split())[:300]})"
        ) from None
    return TrainedNet(module.eval(), facts, source, run)


@distributed.reported_to_rank_zero  # under DDP, rank 0 says which rank failed and why
def evaluate(cfg: DictConfig) -> float:
    """task=eval: test the trained net on `data=`'s test split in a new run linked to the
    trained one (see the module's docstring); return its test_acc."""
    conf, info = validate_applying(cfg)
    uri = tracking.resolve_tracking_uri(conf)
    client = open_store(uri, conf.logger.stale_after_s)
    trained = trained_net(conf, client)
    check_applies(conf, trained.facts, trained.source, info)
    norm = {key: trained.facts[key] for key in ("mean", "std")}
    data_conf = dataclasses.replace(conf.data, normalize=norm)  # the training's normalisation
    dm, out = data.build(data_conf), job_output_dir(conf)
    if distributed.global_rank() != 0:  # under DDP: rank 0 alone opens the run
        return tested(conf, trained, dm, out, None)["test_acc"]
    run_id = open_eval_run(client, conf, trained, data_conf, out)
    with tracking.run_status(client, run_id, conf):
        done = tested(conf, trained, dm, out, RunLogger(uri, run_id, resumed=False))
    source_run = trained.run.info
    experiment = client.get_experiment(source_run.experiment_id).name
    print(
        f"\neval of run {source_run.run_id} ({source_run.run_name}, trained on "
        f"{trained.facts['data']}) on {conf.data.name}: test_acc {done['test_acc']:.4f}  "
        f"test_loss {done['test_loss']:.4f}  ({len(dm.test[1])} images, {trained.source})\n"
        + tracking.where_text(
            experiment,
            uri,
            source_run.experiment_id,
            run_id,
            out,
        )
    )
    return done["test_acc"]


def tested(
    conf: Config, trained: TrainedNet, dm: data.TensorDataModule, out: Path, logger
) -> dict[str, float]:
    """The net tested on `dm`'s test split on every rank of `conf.trainer` (the other ranks
    watched from rank 0); what was logged, as numbers."""
    trainer = L.Trainer(
        **vars(conf.trainer),
        logger=logger or False,
        callbacks=[MistakesLogger(dm.class_names)],
        default_root_dir=out,
    )
    ending = "the eval run is FAILED" if logger else "nothing was recorded"
    with distributed.watched(trainer, out, lambda: ending):
        trainer.test(trained.module, datamodule=dm, verbose=False)
    return {key: float(value) for key, value in trainer.callback_metrics.items()}


def open_eval_run(
    client: MlflowClient, conf: Config, trained: TrainedNet, data_conf: DataConf, out: Path
) -> str:
    """A new RUNNING run, child of the trained run, with data.* (as applied) and model.* params."""
    source, model = trained.run.info, trained.facts["model"]
    tags = tracking.run_tags(conf, out) | tracking.process_tags()
    tags |= {"model": str(model["name"]), "activation": str(model.get("activation"))}
    tags |= {KIND_TAG: "eval", EVALUATES_TAG: source.run_id, "mlflow.parentRunId": source.run_id}
    tags |= {CHECKPOINT_TAG: trained.source}
    name = f"eval {source.run_name} on {conf.data.name}"
    run_id = client.create_run(source.experiment_id, run_name=name, tags=tags).info.run_id
    applied = {"data": dataclasses.asdict(data_conf), "model": model}
    tracking.log_params(client, run_id, tracking.flatten(applied))
    return run_id


def predict(cfg: DictConfig) -> Path:
    """task=predict: classify the images under predict.path with the trained net and write
    a CSV (path, class, confidence, top<i>_class, top<i>_prob); no MLflow run. Returns its path."""
    conf, _ = validate_applying(cfg)
    files = image_files(Path(conf.predict.path).expanduser())
    from_file = Path(str(conf.resume)).expanduser().is_file()  # then no store is needed
    uri = tracking.resolve_tracking_uri(conf)
    trained = trained_net(conf, None if from_file else open_store(uri, conf.logger.stale_after_s))
    probs = probabilities(trained.module, images(files, trained.facts))
    output = Path(conf.predict.output or job_output_dir(conf) / "predictions.csv")
    classes = trained.facts["class_names"]
    write_predictions(output, files, probs, classes, min(conf.predict.top_k, len(classes)))
    print(f"\n{len(files)} image(s) classified by {trained.source}: {output}")
    return output


def image_files(path: Path) -> list[Path]:
    """`path` if it is a file, else the image files under the folder (recursively), sorted."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ConfigError(
            f"predict.path: {str(path)!r} does not exist (allowed: a folder of images or one image)"
        )
    files = sorted(f for f in path.rglob("*") if f.suffix.lower() in IMG_EXTENSIONS)
    if not files:
        raise ConfigError(
            f"predict.path: no images under {path} (allowed: files ending in "
            f"{', '.join(IMG_EXTENSIONS)})"
        )
    return files


def images(files: list[Path], facts: dict) -> torch.Tensor:
    """The files as the net's input: read, converted and resized as the image_folder source
    does, on the 0..1 scale, normalised with the training's mean/std."""
    channels, height, width = facts["input_shape"]
    pixels = []
    for file in files:
        image = decode(file, channels, (height, width))
        if isinstance(image, str):
            raise ConfigError(f"predict.path: cannot read image {file} ({image})")
        pixels.append(image)
    return normalise(torch.stack(pixels), facts["mean"], facts["std"])


@torch.no_grad()
def probabilities(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Softmax of the net's outputs, PREDICT_BATCH images per forward pass."""
    return torch.cat([net(batch).softmax(dim=1) for batch in x.split(PREDICT_BATCH)])


def write_predictions(
    output: Path, files: list[Path], probs: torch.Tensor, class_names: list[str], top_k: int
) -> None:
    """One row per image: path, class, confidence, then top<i>_class, top<i>_prob (i = 1..k)."""
    best, indices = probs.topk(top_k, dim=1)
    ranks = [(f"top{i}_class", f"top{i}_prob") for i in range(1, top_k + 1)]
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["path", "class", "confidence", *[c for pair in ranks for c in pair]])
        for file, p, k in zip(files, best.tolist(), indices.tolist(), strict=True):
            guesses = [cell for j in range(top_k) for cell in (class_names[k[j]], f"{p[j]:.6f}")]
            writer.writerow([str(file), class_names[k[0]], f"{p[0]:.6f}", *guesses])
