"""What a run prints: each log line once, and no library noise a user cannot act on.

Lightning, lightning.fabric and torchmetrics attach their own stderr handlers, so under Hydra
(which logs to the console and to the job's log file) every Lightning INFO line showed twice.
`quiet_libraries()` removes those handlers and lets the records reach Hydra's handlers once.
Lightning's model summary counts FLOPs as 0 for our nets; the Trainer's `enable_model_summary`
prints cnnexp's own per-layer summary instead (cnnexp/train.py: the table of `task=inspect`).
"""

from __future__ import annotations

import logging
import warnings

OWN_HANDLERS = ("lightning", "lightning.pytorch", "lightning.fabric", "torchmetrics")
NOISE = (  # (logger, message part): records a user cannot act on
    ("lightning.pytorch.utilities.rank_zero", "litlogger"),  # an advert
    ("torch.utils.cpp_extension", "No CUDA runtime is found"),  # model.compile on a CPU machine
)
WARNINGS = (  # message patterns of warnings that say nothing true about a cnnexp run
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # inside Lightning's pytree helper
    # cnnexp logs once per epoch (cnnexp/models/classifier.py), never every n steps:
    r"The number of training batches .* is smaller than the logging interval",
)


def quiet_libraries() -> None:
    """Each library log record once (through the root's, i.e. Hydra's, handlers), minus noise;
    safe to call more than once."""
    for name in OWN_HANDLERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    for name, part in NOISE:
        logger = logging.getLogger(name)
        if not any(getattr(f, "cnnexp_part", None) == part for f in logger.filters):
            logger.addFilter(_dropping(part))
    for pattern in WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


def _dropping(part: str) -> logging.Filter:
    class Drop(logging.Filter):
        cnnexp_part = part

        def filter(self, record: logging.LogRecord) -> bool:
            return part not in record.getMessage()

    return Drop()
