"""`python -m cnnexp [overrides]`: Hydra composes conf/, then the chosen task runs.

Heavy imports (torch, Lightning, MLflow) happen inside the task, so `--help` stays fast.
"""

from __future__ import annotations

import logging
import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from cnnexp import sweeps
from cnnexp.config import ConfigError, register_resolvers

log = logging.getLogger("cnnexp")
register_resolvers()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    try:
        if cfg.task == "inspect":
            from cnnexp.inspect import inspect

            inspect(cfg)
            return None
        if cfg.task == "report":
            from cnnexp.report import report

            report(cfg)
            return None
        from cnnexp.train import train

        return train(cfg)
    except Exception as err:
        bad_input, multirun = isinstance(err, ConfigError), sweeps.in_multirun()
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or not (bad_input or multirun):
            raise  # a bug in a single run: the traceback
        if bad_input:
            print(f"cnnexp: error: {err}", file=sys.stderr)
        if not multirun:
            sys.exit(2)
        if not bad_input:  # its MLflow run is FAILED already; the traceback goes to the job's log
            log.exception("job %s failed; the sweep goes on", HydraConfig.get().job.num)
        sweeps.record_failure(err)
        return None  # Optuna marks the trial FAIL (no float) and asks for the next


if __name__ == "__main__":
    try:
        main()
    finally:  # also when a sweeper gives up (Optuna, when no trial completed)
        code = sweeps.report_failed_jobs()  # one line per failed job of a multirun
    sys.exit(code)
