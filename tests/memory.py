"""How much memory each test needs, measured when asked: `CNNEXP_TEST_MEMORY=FILE make test`
appends a JSON line per test to FILE; `python -m tests.memory FILE [N]` prints the N (15) largest.

A test's figure is the peak, while it ran, of the memory of its worker process plus every
process the worker started (CLI subprocesses, DDP ranks, sweep jobs, data loader workers,
servers): their proportional set sizes summed (a page shared by n processes counts 1/n in each,
so forked workers are not counted n times), sampled every 100 ms from /proc, or the worker's
own exact peak resident memory where that is larger (the kernel's high-water mark VmHWM, reset
at the test's start). `start_mb` is what the worker held when the test began (torch, Lightning
and MLflow alone are ~1.1 GB), so `peak_mb - start_mb` is what the test added. Linux only; off
unless the variable is set. Reading a process's PSS walks its page tables: the sampling costs
CPU (a few % to tens of %), so time the suite in a run without it.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

import pytest


def _proc_kb(file: str, key: str) -> int:
    """The kB figure of `key` in a /proc file of "Key: value kB" lines (0: the process ended)."""
    try:
        for line in Path(file).read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    except (OSError, IndexError, ValueError):
        pass
    return 0


def _pss_kb(pid: int) -> int:
    """Proportional set size: a page shared by n processes counts 1/n in each (a forked data
    loader worker's RSS counts every page it still shares with its parent)."""
    return _proc_kb(f"/proc/{pid}/smaps_rollup", "Pss")


def _descendants(root: int) -> list[int]:
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent[int(entry.name)] = int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
                )
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [root]
    while frontier:
        children = [pid for pid, ppid in parent.items() if ppid in frontier]
        found += children
        frontier = children
    return found


class Sampler:
    """The largest sum of the worker's and its descendants' PSS seen while running."""

    def __init__(self) -> None:
        self.peak_kb, self.stop = 0, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        me = os.getpid()
        while not self.stop.wait(0.1):
            processes = [me, *_descendants(me)]
            self.peak_kb = max(self.peak_kb, sum(_pss_kb(pid) for pid in processes))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem):
    target = os.environ.get("CNNEXP_TEST_MEMORY")
    if not target:
        yield
        return
    start_kb = _proc_kb("/proc/self/status", "VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := the RSS now
    sampler = Sampler()
    sampler.thread.start()
    try:
        yield
    finally:
        sampler.stop.set()
        sampler.thread.join()
        peak_kb = max(sampler.peak_kb, _proc_kb("/proc/self/status", "VmHWM"))
        line = {"test": item.nodeid, "peak_mb": peak_kb // 1024, "start_mb": start_kb // 1024}
        with open(target, "a") as out:
            out.write(json.dumps(line) + "\n")


def main(path: str, top: int = 15) -> None:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    rows.sort(key=lambda r: -r["peak_mb"])
    print(f"{len(rows)} tests; the {top} with the largest peak (MB, worker + its processes):")
    for r in rows[:top]:
        print(f"{r['peak_mb']:6d} (+{r['peak_mb'] - r['start_mb']:5d})  {r['test']}")
    added = max(rows, key=lambda r: r["peak_mb"] - r["start_mb"])
    print(f"largest added: +{added['peak_mb'] - added['start_mb']} MB  {added['test']}")


if __name__ == "__main__":
    main(sys.argv[1], *map(int, sys.argv[2:3]))  # FILE [how many]
