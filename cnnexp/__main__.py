"""`cnnexp [overrides]` (= `python -m cnnexp`): Hydra composes conf/, then the chosen task runs.

Heavy imports (torch, Lightning, MLflow) happen inside the task, so `--help` stays fast.
"""

from __future__ import annotations

import logging
import os
import sys

import hydra
import hydra._internal.utils as hydra_internals
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from omegaconf import DictConfig

from cnnexp import schema, sweeps
from cnnexp.errors import exit_code, one_line
from cnnexp.paths import config_dir

schema.register()


def report_errors(func):
    """Stands in for Hydra's run_and_report (which prints several lines and exits 1): a user
    mistake, also one found while Hydra composes the config, is one line and exit 2."""
    try:
        return func()
    except Exception as err:
        line = one_line(err)
        if line is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise  # a bug: the traceback
        print(f"cnnexp: error: {line}", file=sys.stderr)
        sys.exit(exit_code(err))


# A monkeypatch, kept because Hydra 1.3 has no public hook for how @hydra.main reports an error
# raised while it composes (its run_and_report prints the message plus "Set the environment
# variable HYDRA_FULL_ERROR=1..." and exits 1); the Compose API would give us the error, but
# not the multirun, launchers and sweepers @hydra.main brings.
hydra_internals.run_and_report = report_errors
_all_group_options = ConfigLoaderImpl.get_group_options


def public_group_options(self, *args, **kwargs) -> list[str]:
    """A group's options as `--help`, tab completion and `glob(*)` list them: without the
    schemas cnnexp/schema.py stores as `_<name>` (what conf/ files build on, never a choice)."""
    return [o for o in _all_group_options(self, *args, **kwargs) if not o.startswith("_")]


ConfigLoaderImpl.get_group_options = public_group_options


def run_task(cfg: DictConfig) -> float | None:
    """The task the config names; heavy imports happen here, not at start-up."""
    if cfg.task == "inspect":
        from cnnexp.layers import inspect

        inspect(cfg)
        return None
    if cfg.task == "report":
        from cnnexp.report import report

        report(cfg)
        return None
    if cfg.task == "compare":
        from cnnexp.report.compare import compare

        compare(cfg)
        return None
    if cfg.task == "eval":
        from cnnexp.evaluate import evaluate

        return evaluate(cfg)
    if cfg.task == "predict":
        from cnnexp.evaluate import predict

        predict(cfg)
        return None
    from cnnexp.train import train

    return train(cfg)


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def main(cfg: DictConfig) -> float | None:
    try:
        return run_task(cfg)
    except Exception as err:
        line = one_line(err)
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or not (line or sweeps.in_multirun()):
            raise  # a bug in a single run: the traceback
        if not sweeps.in_multirun():
            print(f"cnnexp: error: {line}", file=sys.stderr)
            sys.exit(exit_code(err))  # before Hydra's own "Error executing job" line
        sweeps.record_failure(err)  # one line per failed job when the sweep ends (report_jobs)
        return None  # Optuna marks the trial FAIL (no float) and asks for the next


def cli() -> None:
    """The `cnnexp` console command and `python -m cnnexp`: Hydra's main, then (multirun) what
    became of each job, and the exit code that says so."""
    logging.raiseExceptions = False  # a log file on a full disk: no traceback per log line
    try:
        main()
    finally:  # also when a sweeper gives up (Optuna) or Ctrl-C stops a job of a sweep
        code = sweeps.report_jobs()  # a multirun: one line per failed (after Ctrl-C: every) job
        if code:
            sys.exit(code)


if __name__ == "__main__":
    cli()
