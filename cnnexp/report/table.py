"""The comparison table, pure: the params that differ across runs and one formatted row per run."""

from __future__ import annotations

import itertools
import math
import re
import statistics
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from cnnexp.analysis.fit import BEST_EPOCH, best_epoch
from cnnexp.report.select import RunRecord

SEED = "seed"  # the param whose runs form one row (SeedGroup)
MISSING = "–"  # a param a run does not have, a metric it did not record
NOISY = re.compile(r"^(paths|logger|report|hydra)\.|(dirpath|_dir|\.root)$")  # differ per run
COLUMN_NOTES = (
    "Config columns: the params whose values differ between these runs (paths, logger and other "
    "run-specific keys skipped). params: trainable parameters. FLOPs/image: forward pass, one "
    "image. RF: theoretical receptive field at the last spatial layer (px). ERF: side of the "
    "square holding 95 % of the effective receptive field, after the last epoch (px). "
    "train/infer img/s: measured throughput on one training batch (forward + backward / "
    f"forward). best val_acc: highest over the epochs; {BEST_EPOCH}: the first epoch (from 0) "
    "reaching it, the checkpoint's, the diagnosis' and explorer.html's. fit: fit_diagnosis. "
    "n, seeds: the runs of a row, which differ only in seed; a value over several is their mean "
    "± standard deviation (n − 1), or the value where all are equal (best epoch: their mean); "
    "fit: each run's diagnosis, counted. "
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
    """Params (noisy ones and `seed`, a column of its own, skipped) whose value is not the same
    in every run, absent counting as a value, except where the absence follows from a choice
    shown already: a key some runs lack, equal in the others, under a section whose
    `name`/`_target_` differs (model.orb.* of an ORB run next to CNN runs)."""
    keys = sorted({k for run in runs for k in run.params if k != SEED and not NOISY.search(k)})
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
    """(highest val_acc, BEST_EPOCH: the first epoch reaching it), or None without a val_acc
    curve."""
    curve = dict(run.curves.get("val_acc") or [])
    epoch = best_epoch(curve)
    return None if epoch is None else (curve[epoch], epoch)


@dataclass(frozen=True)
class SeedGroup:
    """Runs of one status whose configs differ only in `seed` (and run-specific keys): one row
    of the report."""

    runs: list[RunRecord]  # oldest first

    @property
    def first(self) -> RunRecord:
        return self.runs[0]

    @property
    def seeds(self) -> list[str]:
        return [run.params.get(SEED, MISSING) for run in self.runs]

    def values(self, metric: str) -> list[float]:
        return [run.metrics[metric] for run in self.runs if metric in run.metrics]

    def best_val(self) -> list[tuple[float, int]]:
        return [best for run in self.runs if (best := best_val_acc(run))]


def seed_groups(runs: list[RunRecord]) -> list[SeedGroup]:
    """The runs grouped by status and config less `seed` and the noisy keys, in order of first
    run (a failed run never joins the finished runs of its config)."""
    groups: dict[tuple, list[RunRecord]] = {}
    for run in runs:
        config = sorted((k, v) for k, v in run.params.items() if k != SEED and not NOISY.search(k))
        groups.setdefault((run.status, *config), []).append(run)
    return [SeedGroup(members) for members in groups.values()]


def group_labels(groups: list[SeedGroup]) -> dict[str, str]:
    """The first run's id -> its name, with the id's first 8 characters where names repeat and
    the number of seeds where there are several."""
    counts = Counter(g.first.name for g in groups)
    labels = {}
    for g in groups:
        label = (
            g.first.name if counts[g.first.name] == 1 else f"{g.first.name} ({g.first.run_id[:8]})"
        )
        labels[g.first.run_id] = label + (f", n={len(g.runs)}" if len(g.runs) > 1 else "")
    return labels


def mean_std(values: list[float]) -> tuple[float, float] | None:
    """Mean and sample standard deviation (n − 1; 0 for one value), None for no value."""
    if not values:
        return None
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def spread(values: list[float], fmt: Callable[[float], str]) -> str:
    """One value as `fmt` writes it; several: mean ± sample standard deviation, or the value
    alone where all are equal (a parameter count)."""
    if not values:
        return MISSING
    if len(set(values)) == 1:
        return fmt(values[0])
    mean, std = mean_std(values)
    return f"{fmt(mean)} ± {fmt(std)}"


def diagnoses(group: SeedGroup) -> str:
    """The group's fit diagnoses: `good fit`, or `underfit ×2, good fit ×1` where they differ."""
    counts = Counter(run.tags.get("fit_diagnosis", MISSING) for run in group.runs)
    if len(counts) == 1:
        return next(iter(counts))
    return ", ".join(f"{label} ×{n}" for label, n in counts.most_common())


def _row(group: SeedGroup, params: list[str]) -> list[str]:
    run, best = group.first, group.best_val()
    name = run.name if run.status == "FINISHED" else f"{run.name} ({run.status})"
    return [
        name,
        run.run_id[:8],
        str(len(group.runs)),
        ", ".join(group.seeds),
        *(compact(run.params.get(key, MISSING)) for key in params),
        *(spread(group.values(key), fmt) for _, key, fmt in FACTS),
        spread([value for value, _ in best], "{:.4f}".format),
        spread([float(epoch) for _, epoch in best], lambda v: f"{v:.1f}".removesuffix(".0")),
        spread(group.values("test_acc"), "{:.4f}".format),
        diagnoses(group) if any("fit_diagnosis" in r.tags for r in group.runs) else MISSING,
    ]


def mean_best_val(group: SeedGroup) -> float:
    return statistics.mean(value for value, _ in group.best_val()) if group.best_val() else -1.0


def comparison_table(runs: list[RunRecord]) -> Table:
    """One row per seed group (one run when no other run shares its config but the seed), best
    mean val_acc first (groups without one last)."""
    groups = sorted(seed_groups(runs), key=lambda g: -mean_best_val(g))
    params = differing_params([g.first for g in groups])
    header = [
        "run",
        "id",
        "n",
        "seeds",
        *params,
        *(title for title, _, _ in FACTS),
        "best val_acc",
        BEST_EPOCH,
        "test_acc",
        "fit",
    ]
    numeric = [False, False, True, False, *(False for _ in params), *(True for _ in FACTS)]
    numeric += [True, True, True, False]
    return Table(header, [_row(group, params) for group in groups], numeric)


def seed_verdicts(groups: list[SeedGroup], metric: str = "test_acc") -> list[str]:
    """For each pair of neighbours in the ranking by mean `metric` (groups of ≥ 2 seeds only):
    the difference, and whether it exceeds the seed spread, i.e. every seed of the better group
    scores above every seed of the other (with the chance of that between equally good
    configs); Welch's t-test p-value alongside."""
    from scipy.stats import ttest_ind

    ranked = sorted(
        (g for g in groups if len(g.values(metric)) >= 2),
        key=lambda g: -statistics.mean(g.values(metric)),
    )
    labels, lines = group_labels(groups), []
    for better, worse in itertools.pairwise(ranked):
        a, b = better.values(metric), worse.values(metric)
        diff = 100 * (statistics.mean(a) - statistics.mean(b))
        with warnings.catch_warnings():  # no spread in either group: p is nan, said below
            warnings.simplefilter("ignore", RuntimeWarning)
            p = float(ttest_ind(a, b, equal_var=False).pvalue)
        test = f"Welch's t-test p = {p:.2g}" if math.isfinite(p) else "no spread for a t-test"
        chance = 2 / math.comb(len(a) + len(b), len(a))  # equally good configs: separate
        verdict = (  # either way with this probability
            f"exceeds the seed spread (every seed above every seed; chance {chance:.2g} if the "
            "two were equally good)"
            if min(a) > max(b)
            else f"within the seed spread ({labels[better.first.run_id]}: "
            f"{100 * min(a):.1f}–{100 * max(a):.1f} %, {labels[worse.first.run_id]}: "
            f"{100 * min(b):.1f}–{100 * max(b):.1f} %)"
        )
        lines.append(
            f"{labels[better.first.run_id]} vs {labels[worse.first.run_id]}: {metric} "
            f"{diff:+.1f} points, {verdict}; {test}."
        )
    return lines
