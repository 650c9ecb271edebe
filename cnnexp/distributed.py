"""Multi-process training (Lightning's DDP) as cnnexp runs it: rank 0 starts the other ranks of
its node with the job's own overrides (also inside a -m sweep) and watches them; a rank that
fails ends the run with one line naming the rank and the cause, within a bounded time.

- `watched(trainer, ...)`: around fit and test on every rank. On local rank 0 of a node it puts
  `RankLauncher` in place of Lightning's launcher (whose observer SIGKILLs rank 0 when a child
  fails, leaving its run RUNNING); at the end it waits for the other ranks to leave, so rank 0
  records alone afterwards, and leaves the process as it found it (environment, process group),
  so the next job of a sweep starts its own ranks. Every other rank leaves the process group
  at the end of the block too, before it exits.
- `reported_to_rank_zero`: on a rank other than 0, a failure is written where rank 0 reads it
  (`<output dir>/rank_failures/<rank>.txt`), its traceback goes to the rank's log file only,
  and the rank exits 1 without a word on the console: rank 0 says the one line.

Ranks that a cluster starts (SLURM, torchrun) are the cluster's to watch.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.fabric.utilities.distributed import _set_num_threads_if_needed
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from lightning.pytorch.utilities import rank_zero_only

from cnnexp.errors import RunStopped, first_line, one_line
from cnnexp.paths import write_whole
from cnnexp.sweeps import log_files

FAILURES = "rank_failures"  # in the job's output dir: <rank>.txt, the cause a rank failed with
PEER_WAIT_S = 10.0  # after rank 0's collective broke: how long it waits to learn which rank died
FALLBACK_S = 60.0  # after a rank failed: how long rank 0 may take to stop before it is ended
LEAVE_S = 60.0  # at the end: how long the other ranks may take to exit before they are killed
LAUNCH_ENV = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "NODE_RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "OMP_NUM_THREADS",
)
CONFIG_FLAGS = ("--config-dir", "-cd", "--config-name", "-cn", "--config-path", "-cp")


class RankFailed(RunStopped):
    """Another rank of this training failed (an error, a signal, an exit): str() names the
    rank, the cause and what became of the run."""


def global_rank() -> int:
    """This process's rank among all processes of the training (0 without DDP)."""
    return rank_zero_only.rank


def reported_to_rank_zero(func: Callable) -> Callable:
    """`func` as it is on rank 0; on any other rank a failure is written for rank 0 to report
    (its traceback to this rank's log file) and the rank exits 1 quietly."""

    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> Any:
        rank = global_rank()
        if rank == 0:
            return func(*args, **kwargs)
        try:
            return func(*args, **kwargs)
        except BaseException as err:
            if isinstance(err, SystemExit) and not err.code:
                raise
            cause = one_line(err) or first_line(f"{type(err).__name__}: {err}")[:500]
            write_failure(job_dir(), rank, cause)
            log_files(f"rank {rank} failed: {cause}", err)  # its log file, not the console
            raise SystemExit(1) from None

    return run


def job_dir() -> Path:
    """The job's output dir, which every rank of a node shares (its Hydra run dir)."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def write_failure(folder: Path, rank: int, cause: str) -> None:
    write_whole(folder / FAILURES / f"{rank}.txt", cause)


def failure_cause(folder: Path, rank: int, code: int) -> str:
    """What ended rank `rank` (exit code `code`): the line it wrote, else the signal or code."""
    written = folder / FAILURES / f"{rank}.txt"
    if written.is_file():
        return f"failed: {written.read_text().strip()}"
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def rank_command(local_rank: int) -> tuple[list[str], str]:
    """The command that starts rank `local_rank` of this job, and where: `python -m cnnexp`
    with the job's own overrides (not the sweep's) and config flags, into this job's output
    dir; Hydra writes no second .hydra/ there."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd

    hydra = HydraConfig.get()
    command = [sys.executable, "-m", "cnnexp", *config_flags(sys.argv[1:]), *hydra.overrides.task]
    command += [
        f'hydra.run.dir="{hydra.runtime.output_dir}"',
        f"hydra.job.name=train_ddp_process_{local_rank}",
        "hydra.output_subdir=null",
    ]
    return command, get_original_cwd()


def config_flags(argv: list[str]) -> list[str]:
    """The flags of `argv` that say where the config is (`--config-dir DIR`, `-cn=NAME` ...)."""
    kept, keep_next = [], False
    for arg in argv:
        if keep_next or arg.split("=")[0] in CONFIG_FLAGS:
            kept.append(arg)
            keep_next = not keep_next and arg in CONFIG_FLAGS
    return kept


class RankLauncher(_SubprocessScriptLauncher):
    """Lightning's launcher for DDP on one node, with rank_command for the children and a
    thread per child that waits for it: a child that fails makes rank 0's fit or test raise
    RankFailed (`ending()`: what became of the run, how to continue it); if rank 0 does not
    stop within FALLBACK_S (stuck in a collective), `abandon(line)` records the failure, the
    line is printed and the process exits 1. `command(local_rank)`: what starts a child, where."""

    def __init__(
        self,
        base: _SubprocessScriptLauncher,
        out: Path,
        ending: Callable[[], str],
        abandon: Callable[[str], None],
        command: Callable[[int], tuple[list[str], str]] = rank_command,
        fallback_s: float = FALLBACK_S,
    ) -> None:
        super().__init__(base.cluster_environment, base.num_processes, base.num_nodes)
        self.out, self.ending, self.abandon = out, ending, abandon
        self.command, self.fallback_s = command, fallback_s
        self.failed: list[tuple[int, int]] = []  # (rank, exit code) of children that failed
        self.a_rank_failed, self.stopped = threading.Event(), threading.Event()
        self.saved_env: dict[str, str | None] = {}
        self.saved_threads = torch.get_num_threads()

    def launch(self, function: Callable, *args: Any, trainer: L.Trainer | None = None, **kw):
        self.cluster_environment.validate_settings(self.num_processes, self.num_nodes)
        if not self.cluster_environment.creates_processes_externally:
            self._call_children_scripts()
        _set_num_threads_if_needed(num_processes=self.num_processes)
        try:
            return function(*args, **kw)
        except (KeyboardInterrupt, SystemExit):  # rank 0 stopped: its own ending (KILLED)
            self.stopped.set()
            raise
        except BaseException as err:
            if peer_lost(err):
                self.a_rank_failed.wait(PEER_WAIT_S)  # the child's exit may trail its socket's
            if self.failed:
                raise RankFailed(self.line()) from err
            raise

    def _call_children_scripts(self) -> None:
        self._check_can_spawn_children()
        env = self.cluster_environment
        shared = {
            "MASTER_ADDR": env.main_address,
            "MASTER_PORT": str(env.main_port),
            "NODE_RANK": str(env.node_rank()),
            "LOCAL_RANK": str(env.local_rank()),
            "WORLD_SIZE": str(self.num_processes * self.num_nodes),
        }
        self.saved_env = {key: os.environ.get(key) for key in LAUNCH_ENV}  # Lightning sets them
        self.saved_threads = torch.get_num_threads()
        os.environ.update(shared)
        for local_rank in range(1, self.num_processes):
            command, cwd = self.command(local_rank)
            child_env = {**os.environ, "LOCAL_RANK": str(local_rank)}
            self.procs.append(subprocess.Popen(command, env=child_env, cwd=cwd))
            waiter = threading.Thread(target=self._wait, args=(local_rank,), daemon=True)
            waiter.start()

    def global_rank_of(self, local_rank: int) -> int:
        return self.cluster_environment.node_rank() * self.num_processes + local_rank

    def _wait(self, local_rank: int) -> None:
        code = self.procs[local_rank - 1].wait()
        if code == 0 or self.stopped.is_set():
            return
        self.failed.append((self.global_rank_of(local_rank), code))
        self.a_rank_failed.set()
        if not self.stopped.wait(self.fallback_s):  # rank 0 is stuck where no error reaches it
            line = self.line()
            self.abandon(line)
            print(f"cnnexp: error: {line}", file=sys.stderr, flush=True)
            self.kill(signal.SIGKILL)
            os._exit(1)

    def line(self) -> str:
        rank, code = self.failed[0]
        world = self.num_processes * self.num_nodes
        cause = failure_cause(self.out, rank, code)
        return f"rank {rank} of {world} {cause}; {self.ending()}"

    def close(self, failing: bool) -> None:
        """The other ranks gone (they leave by themselves within LEAVE_S, else are killed; at
        once when rank 0 is `failing`), the environment and process group as before the launch."""
        if failing:
            self.stopped.set()  # what the kill does to them is no failure of theirs
        for proc in self.procs:
            try:
                proc.wait(0 if failing else LEAVE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.stopped.set()
        for key, value in self.saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        torch.set_num_threads(self.saved_threads)
        leave_process_group()


def leave_process_group() -> None:
    """This process's part in the training's process group ended, once every collective is
    done: a process that exits with gloo's worker threads alive can abort in the interpreter's
    finalization ("terminate called without an active exception", SIGABRT; pytorch#190489)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def peer_lost(err: BaseException) -> bool:
    """Whether `err` says a collective broke because another process went away (gloo, NCCL)."""
    text = str(err)
    return any(words in text for words in ("closed by peer", "Connection reset", "NCCL", "gloo"))


@contextmanager
def watched(
    trainer: L.Trainer,
    out: Path,
    ending: Callable[[], str] = lambda: "nothing was recorded",
    abandon: Callable[[str], None] = lambda line: None,
) -> Iterator[None]:
    """Fit and test in the block with the other ranks watched (see the module's docstring);
    at its end they have left, and a rank that failed meanwhile raises RankFailed. A SIGTERM
    that reached rank 0 is a stop (SystemExit: the run KILLED), whatever broke after it."""
    launcher = trainer.strategy.launcher
    starts_ranks = isinstance(launcher, _SubprocessScriptLauncher) and not (
        launcher.cluster_environment.creates_processes_externally  # a cluster's, or a child
    )
    if not starts_ranks:
        yield
        leave_process_group()  # a rank that leaves with it alive may abort at exit (SIGABRT)
        return
    ours = RankLauncher(launcher, out, ending, abandon)
    trainer.strategy._launcher = ours
    try:
        yield
    except BaseException as err:
        ours.close(failing=True)
        if trainer.received_sigterm and not isinstance(err, KeyboardInterrupt | SystemExit):
            # SIGTERM stops the ranks at different collectives, which then break: still a stop
            raise SystemExit(128 + signal.SIGTERM) from err
        raise
    ours.close(failing=False)
    if ours.failed:
        raise RankFailed(ours.line())
