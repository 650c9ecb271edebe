"""The house has floors: a module imports only from its own floor or below, never upwards.

The floors, lowest first (a module belongs to the floor of the longest name that matches it):
0. errors, paths, metrics, console, sweeps: words and places everyone uses;
1. limits, schema, targets: what a config may say;
2. data, models, features.orb and .bovw, tracking: the things a run is made of (analysis is a
   floor above models: it measures nets, nets never ask it);
3. analysis, typed: measuring nets, the config as typed objects;
4. probes, checkpoints, validate, resume, report, layers, evaluate, features.run, distributed:
   tasks' parts;
5. recorded, train, api, bench, studies, docs, __main__, the package itself: the flows.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cnnexp"

FLOORS = [
    ["errors", "paths", "metrics", "console", "sweeps"],
    ["limits", "schema", "targets"],
    ["data", "models", "features.orb", "features.bovw", "features", "tracking"],
    ["analysis", "typed"],
    [
        "probes",
        "checkpoints",
        "validate",
        "resume",
        "report",
        "layers",
        "evaluate",
        "features.run",
        "distributed",
    ],
    ["recorded", "train", "api", "bench", "studies", "docs", "__main__", ""],
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(p for p in parts if p != "__init__")


def unit(name: str) -> tuple[str, int]:
    """(prefix, floor) of module `name` (relative to the package): the longest prefix in FLOORS
    that matches it ("" for the package itself and anything no prefix names)."""
    matches = [
        (len(prefix), prefix, level)
        for level, prefixes in enumerate(FLOORS)
        for prefix in prefixes
        if name == prefix or name.startswith(f"{prefix}.") or prefix == ""
    ]
    _, prefix, level = max(matches)
    return prefix, level


def floor(name: str) -> int:
    """The floor of module `name` (relative to the package): its longest matching prefix's."""
    return unit(name)[1]


def imports(path: Path) -> set[str]:
    """cnnexp modules that `path` imports (relative to the package; `from cnnexp import x` is x),
    at any depth of the file: a function's import is an import too."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "cnnexp":
                names = [alias.name for alias in node.names]
            elif node.module.startswith("cnnexp."):
                names = [node.module.removeprefix("cnnexp.")]
        elif isinstance(node, ast.Import):
            names = [
                a.name.removeprefix("cnnexp.") for a in node.names if a.name.startswith("cnnexp.")
            ]
        found.update(names)
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_floor() -> None:
    names = [module_name(p) for p in MODULES]
    assert {"errors", "typed", "models.graph", "recorded", "train"} <= set(names)
    unplaced = [
        n for n in names if floor(n) == len(FLOORS) - 1 and n.split(".")[0] not in FLOORS[-1]
    ]
    assert unplaced == [], "give these modules a floor in FLOORS"


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_no_import_runs_up_a_floor(path: Path) -> None:
    me = module_name(path)
    upward = sorted(d for d in imports(path) if floor(d) > floor(me))
    assert upward == [], f"cnnexp.{me} (floor {floor(me)}) imports from above: {upward}"


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The rule is not vacuous: a model importing the trainer's flow is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from cnnexp.train import train_run\n")
    assert floor("models.blocks") < max(floor(d) for d in imports(bad))
