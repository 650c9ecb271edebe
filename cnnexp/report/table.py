"""The comparison table, pure: the params that differ across runs and one formatted row per run."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from cnnexp.report.select import RunRecord

MISSING = "–"  # a param a run does not have, a metric it did not record
NOISY = re.compile(r"^(paths|logger|report|hydra)\.|(dirpath|_dir|\.root)$")  # differ per run
COLUMN_NOTES = (
    "Config columns: the params whose values differ between these runs (paths, logger and other "
    "run-specific keys skipped). params: trainable parameters. FLOPs/image: forward pass, one "
    "image. RF: theoretical receptive field at the last spatial layer (px). ERF: side of the "
    "square holding 95 % of the effective receptive field, after the last epoch (px). "
    "train/infer img/s: measured throughput on one training batch (forward + backward / "
    "forward). best val_acc: highest over the epochs, at epoch (from 0). fit: fit_diagnosis. "
    f"{MISSING}: not recorded by that run (e.g. no RF for a run without a CNN)."
)


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]
    numeric: list[bool]  # per column: right-aligned


def _si(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f}"


FACTS: list[tuple[str, str, Callable[[float], str]]] = [  # title, metric, format
    ("params", "n_params", "{:,.0f}".format),
    ("FLOPs/image", "flops_per_image", _si),
    ("RF", "receptive_field", "{:.0f}".format),
    ("ERF", "erf_size", "{:.0f}".format),
    ("train img/s", "throughput_train", "{:,.0f}".format),
    ("infer img/s", "throughput_infer", "{:,.0f}".format),
]


def differing_params(runs: list[RunRecord]) -> list[str]:
    """Params (noisy ones skipped) whose value is not the same in every run, absent counting as
    a value, except where the absence follows from a choice shown already: a key some runs lack,
    equal in the others, under a section whose `name`/`_target_` differs (model.orb.* of an ORB
    run next to CNN runs)."""
    keys = sorted({k for run in runs for k in run.params if not NOISY.search(k)})
    values = {k: [run.params.get(k) for run in runs] for k in keys}

    def differs(key: str) -> bool:
        return len(set(values.get(key, [None]))) > 1

    def implied(key: str) -> bool:
        section = key.split(".")[0]
        chosen = differs(f"{section}.name") or differs(f"{section}._target_")
        present = {v for v in values[key] if v is not None}
        return "." in key and None in values[key] and len(present) == 1 and chosen

    return [k for k in keys if differs(k) and not implied(k)]


def compact(value: str) -> str:
    """A list/dict param as a Hydra override would write it: [{conv:3,channels:8},{pool:max}]."""
    if value[:1] not in "[{":
        return value
    return value.replace("'", "").replace(": ", ":").replace(", ", ",")


def best_val_acc(run: RunRecord) -> tuple[float, int] | None:
    """(highest val_acc, the first epoch reaching it), or None without a val_acc curve."""
    curve = run.curves.get("val_acc") or []
    if not curve:
        return None
    step, value = max(curve, key=lambda point: (point[1], -point[0]))
    return value, step


def run_labels(runs: list[RunRecord]) -> dict[str, str]:
    """run_id -> run name, with the id's first 8 characters where names repeat."""
    counts = Counter(run.name for run in runs)
    return {
        run.run_id: run.name if counts[run.name] == 1 else f"{run.name} ({run.run_id[:8]})"
        for run in runs
    }


def _row(run: RunRecord, params: list[str]) -> list[str]:
    best = best_val_acc(run)
    metrics = run.metrics
    name = run.name if run.status == "FINISHED" else f"{run.name} ({run.status})"
    return [
        name,
        run.run_id[:8],
        *(compact(run.params.get(key, MISSING)) for key in params),
        *(fmt(metrics[key]) if key in metrics else MISSING for _, key, fmt in FACTS),
        MISSING if best is None else f"{best[0]:.4f}",
        MISSING if best is None else str(best[1]),
        f"{metrics['test_acc']:.4f}" if "test_acc" in metrics else MISSING,
        run.tags.get("fit_diagnosis", MISSING),
    ]


def comparison_table(runs: list[RunRecord]) -> Table:
    """One row per run, best val_acc first (runs without one last)."""
    params = differing_params(runs)
    ranked = sorted(runs, key=lambda run: -(best_val_acc(run) or (-1.0, 0))[0])
    header = [
        "run",
        "id",
        *params,
        *(title for title, _, _ in FACTS),
        "best val_acc",
        "epoch",
        "test_acc",
        "fit",
    ]
    numeric = [False, False, *(False for _ in params), *(True for _ in FACTS), True, True, True]
    return Table(header, [_row(run, params) for run in ranked], [*numeric, False])
