"""`make studies`: rerun the ready studies (conf/experiment/) and write their tables for the docs.

Each study runs as `python -m cnnexp -m +experiment=<study>`, at a small budget unless `--full`
(`seed=0 trainer.max_epochs=2`: one seed, two epochs), into its own store (outputs/studies/);
its runs are read back as `task=report` reads them and docs/studies/<study>.md gets the table,
the seed verdicts and the report's two figures, headed by the date, git commit, seeds, machine and
the exact command. So every study figure in the docs says which code and machine produced it.

    python -m cnnexp.studies                          # every study, small budget
    python -m cnnexp.studies kernel_3x3_vs_5x5        # one study
    python -m cnnexp.studies epochs_fit trainer.max_epochs=3,6 --full   # extra overrides win
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

from cnnexp.report.pages import markdown_table
from cnnexp.report.plots import accuracy_vs_params_figure, curves_figure
from cnnexp.report.select import Selection, select_runs
from cnnexp.report.table import (
    COLUMN_NOTES,
    Table,
    comparison_table,
    group_labels,
    seed_groups,
    seed_verdicts,
)

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "conf" / "experiment"
SMALL = ("seed=0", "trainer.max_epochs=2")  # the budget of `make studies`
BUDGETS = {  # a study whose question is the budget keeps an axis of it
    "epochs_fit": ("trainer.max_epochs=2,10,20",),  # 20: past the epoch val_loss bottoms out
}
FIGURES = {
    "val_curves.png": "Validation accuracy and loss per epoch (mean over seeds, ±1 std band)",
    "accuracy_vs_params.png": "Best val_acc (filled) and test_acc (open) against parameters",
}
# run ids mean nothing outside their store; a preset's block list is named by model.name
SKIPPED_COLUMNS = ("id", "model.blocks")
QUIET = ("trainer.enable_progress_bar=false",)  # no progress bar in the console: no result changes


@dataclass(frozen=True)
class Sweep:
    """One rerun of a study: what ran, where, on what, and how long it took."""

    study: str
    overrides: list[str]
    output_dir: Path
    sweep_id: str
    started: str  # UTC, ISO 8601 to the second
    commit: str  # the code that ran
    seconds: float
    exit_code: int


def studies() -> list[str]:
    """Every ready study: the files of conf/experiment/, by name."""
    return sorted(p.stem for p in EXPERIMENTS.glob("*.yaml"))


def question(study: str) -> str:
    """The study's question: the comment at the top of its YAML, without the command line."""
    lines = []
    for line in (EXPERIMENTS / f"{study}.yaml").read_text().splitlines():
        if not line.startswith("#") or line.startswith("# @package"):
            if lines:
                break
            continue
        text = line.lstrip("#").strip()
        if not text.startswith("python -m cnnexp"):
            lines.append(text)
    text = " ".join(lines).removeprefix("Study: ").split("python -m cnnexp")[0]
    return re.sub(r"\s*\(\d+ runs\)", "", text).strip()  # the full budget's count


def budget(study: str, full: bool, extra: list[str]) -> list[str]:
    """The study's overrides: the small budget (none with `full`), `extra` winning per key."""
    chosen = [] if full else list(BUDGETS.get(study, SMALL))
    keys = {o.split("=", 1)[0] for o in extra}
    return [o for o in chosen if o.split("=", 1)[0] not in keys] + list(extra)


def machine() -> str:
    """The CPU's model and core count, as /proc/cpuinfo names it where there is one."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")]
    model = names[0] if names else platform.processor() or platform.machine()
    return f"{model}, {os.cpu_count()} cores ({platform.system()} {platform.machine()})"


def commit() -> str:
    """The checkout's commit, `+changes` when the tree differs from it; `unknown` outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "cnnexp", "conf"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
    except OSError:
        return "unknown"
    return head.stdout.strip() + (" +changes" if dirty.stdout.strip() else "") or "unknown"


def command(study: str, overrides: list[str]) -> str:
    return " ".join(["python -m cnnexp -m", f"+experiment={study}", *overrides])


def rerun(sweep: Sweep) -> str:
    """The command that writes this page again (extra overrides included)."""
    small = list(BUDGETS.get(sweep.study, SMALL))
    extra = [o for o in sweep.overrides if o not in small]
    full = [] if set(small) <= set(sweep.overrides) else ["--full"]
    return " ".join(["python -m cnnexp.studies", sweep.study, *extra, *full])


def run_sweep(study: str, overrides: list[str], output_dir: Path) -> Sweep:
    """Run the study's sweep in a child process; its jobs' output streams to this console."""
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    sweep_id = f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{study}"
    argv = [sys.executable, "-m", "cnnexp", "-m", f"+experiment={study}", *overrides, *QUIET]
    argv += [f"paths.output_dir={output_dir}", f"hydra.sweep.dir={output_dir}/multirun/{sweep_id}"]
    clock, code_commit = time.perf_counter(), commit()
    code = subprocess.run(argv, cwd=ROOT).returncode
    seconds = time.perf_counter() - clock
    return Sweep(study, overrides, output_dir, sweep_id, started, code_commit, seconds, code)


def without(table: Table, columns: tuple[str, ...]) -> Table:
    keep = [i for i, title in enumerate(table.header) if title not in columns]
    return Table(
        [table.header[i] for i in keep],
        [[row[i] for i in keep] for row in table.rows],
        [table.numeric[i] for i in keep],
    )


def study_page(sweep: Sweep, selection: Selection) -> str:
    """docs/studies/<study>.md: when, where and how the table was made, the table, the seeds'
    verdicts and the figures."""
    groups = seed_groups(selection.runs)
    seeds = sorted({s for g in groups for s in g.seeds}, key=lambda s: (len(s), s))
    failed = [f"{r.name} ({r.status})" for r in selection.left_out]
    facts = [
        f"- **date**: {sweep.started} (UTC); the sweep took {sweep.seconds / 60:.1f} min",
        f"- **code**: commit {sweep.commit}",
        f"- **machine**: {machine()}",
        f"- **seeds**: {', '.join(seeds)}; {len(selection.runs)} runs",
        f"- **command**: `{command(sweep.study, [*sweep.overrides, *QUIET])}`",
        f"- **rerun**: `{rerun(sweep)}`",
    ]
    if failed:
        facts.append(f"- **runs that did not finish** (not in the table): {', '.join(failed)}")
    parts = [
        f"# {sweep.study}",
        f"*{question(sweep.study)}*",
        "\n".join(facts),
        markdown_table(without(comparison_table(selection.runs), SKIPPED_COLUMNS)),
    ]
    verdicts = seed_verdicts(groups)
    if verdicts:
        parts.append("Seeds, neighbours in the ranking by mean test_acc: " + " ".join(verdicts))
    parts.append(COLUMN_NOTES)
    parts += [f"![{caption}]({sweep.study}/{name})" for name, caption in FIGURES.items()]
    return "\n\n".join(parts) + "\n"


def write_study(sweep: Sweep, docs: Path) -> Path:
    """Read the sweep's runs back from its store and write docs/<study>.md and its figures."""
    client = MlflowClient(f"sqlite:///{sweep.output_dir}/mlflow.db")
    experiment = runs_experiment(client, sweep.sweep_id)
    selection = select_runs(client, experiment, sweep.sweep_id, ["FINISHED"], 10_000)
    groups = seed_groups(selection.runs)
    labels = group_labels(groups)
    figures = [curves_figure(groups, labels), accuracy_vs_params_figure(groups, labels)]
    (docs / sweep.study).mkdir(parents=True, exist_ok=True)
    for name, figure in zip(FIGURES, figures, strict=True):
        figure.savefig(docs / sweep.study / name, dpi=90)
    page = docs / f"{sweep.study}.md"
    page.write_text(study_page(sweep, selection))
    return page


def runs_experiment(client: MlflowClient, sweep_id: str) -> str:
    """The experiment the sweep's runs were logged to (the study's logger.experiment_name)."""
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.sweep_id = '{sweep_id}'",
        max_results=1,
    )
    if not runs:
        raise SystemExit(f"cnnexp.studies: sweep {sweep_id} logged no run")
    return client.get_experiment(runs[0].info.experiment_id).name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cnnexp.studies", description=__doc__)
    parser.add_argument(
        "items", nargs="*", help="study names (default: all) and key=value overrides"
    )
    parser.add_argument("--full", action="store_true", help="the study's own budget (no small one)")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "studies")
    parser.add_argument("--output-dir", type=Path, default=ROOT / "outputs" / "studies")
    args = parser.parse_args(argv)
    extra = [i for i in args.items if "=" in i]
    names = [i for i in args.items if "=" not in i] or studies()
    unknown = sorted(set(names) - set(studies()))
    if unknown:
        parser.error(f"unknown studies {unknown} (allowed: {', '.join(studies())})")
    failures = 0
    for study in names:
        sweep = run_sweep(study, budget(study, args.full, extra), args.output_dir.resolve())
        failures += sweep.exit_code != 0
        page = write_study(sweep, args.docs)
        print(f"cnnexp.studies: {study}: {sweep.seconds / 60:.1f} min, wrote {page}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
