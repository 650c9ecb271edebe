"""`model=orb_bovw`: the ORB bag-of-visual-words baseline as one MLflow run, like a CNN run."""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from cnnexp import data, tracking
from cnnexp.features.bovw import BovwClassifier
from cnnexp.features.orb import keypoints_figure, matches_figure, orb_settings
from cnnexp.schema import Config
from cnnexp.tracking.mlflow_run import Trained


def train_orb(conf: Config, composed: dict, out: Path) -> Trained:
    """Fit the ORB baseline on the train split, score train/val/test; return the run."""
    uri, experiment_id = tracking.ensure_experiment(conf)  # an unusable store stops us here
    dm = data.build(conf.data)
    settings = orb_settings(conf.model.orb, dm.input_shape[1:])
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (
        (dm.inputs(x[:]).numpy(), y.numpy()) for x, y in (dm.train, dm.val, dm.test)
    )
    client = MlflowClient(tracking_uri=uri)
    run_id = tracking.open_run(client, experiment_id, conf, composed, out)
    with tracking.run_status(client, run_id, conf):
        model = BovwClassifier(settings, conf.model.vocab_size, conf.model.kmeans_sample, conf.seed)
        model.fit(x_train, y_train)
        facts = dict(model.facts)  # fit_* from the training images
        acc = {
            "train_acc": model.score(x_train, y_train),
            "val_acc": model.score(x_val, y_val),
            "test_acc": model.score(x_test, y_test),  # last: predict_seconds is the test split's
        }
        figure, matches = matches_figure(x_train[0], settings)
        metrics = {
            **acc,
            "keypoints_per_image": facts["fit_keypoints_per_image"],
            "no_keypoint_fraction": facts["fit_no_keypoint_fraction"],
            "fit_seconds": facts["fit_seconds"],
            "predict_seconds": model.facts["predict_seconds"],
            "good_matches_crosscheck": matches["crosscheck"],
            "good_matches_ratio": matches["ratio"],
        }
        for key, value in metrics.items():
            client.log_metric(run_id, key, float(value), step=0)
        client.log_figure(run_id, keypoints_figure(x_train, settings), "orb/keypoints.png")
        client.log_figure(run_id, figure, "orb/matches.png")

    print(
        f"\n{conf.logger.run_name}: val_acc {acc['val_acc']:.4f}  test_acc {acc['test_acc']:.4f}  "
        f"train_acc {acc['train_acc']:.4f}  keypoints/image {metrics['keypoints_per_image']:.1f}  "
        f"no keypoints {metrics['no_keypoint_fraction']:.1%}  fit {metrics['fit_seconds']:.1f} s\n"
        + tracking.where_text(conf.logger.experiment_name, uri, experiment_id, run_id, out)
    )
    return Trained(run_id, uri, out, acc["val_acc"], acc["test_acc"])
