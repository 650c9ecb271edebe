"""`python -m cnnexp [overrides]`: Hydra composes conf/, then the chosen task runs.

Heavy imports (torch, Lightning, MLflow) happen inside the task, so `--help` stays fast.
"""

from __future__ import annotations

import logging
import os
import sys

import hydra
from omegaconf import DictConfig

from cnnexp.config import ConfigError, register_resolvers

log = logging.getLogger("cnnexp")
register_resolvers()
failed_jobs: list[str] = []  # one line per job that failed on bad input (multirun goes on)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        if cfg.task == "inspect":
            from cnnexp.inspect import inspect

            inspect(cfg)
            return None
        from cnnexp.train import train

        return train(cfg)
    except ConfigError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"cnnexp: error: {err}", file=sys.stderr)
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            sys.exit(2)
        failed_jobs.append(str(err))
        return None


if __name__ == "__main__":
    main()
    if failed_jobs:
        sys.exit(2)
