"""Stopping the jobs of a `hydra/launcher=submitit_local` sweep with the sweep process: `JobStopper`.

Under submitit_local the jobs are child processes of the sweep, which would keep training when
the sweep process is stopped. submitit's local executor starts one controller process per job
as a child of the sweep process; the submitit job id is the controller's pid, and the controller
starts the job (its task) as its own child and sends it SIGUSR2 signal_delay_s before timeout_min.
The sweep's jobs are therefore found in the process tree: the sweep process's children that are
jobs of the launcher's executor folder (each has its submitted pickle there, named by its job id
as submitit's `JobPaths` names it), and their children.

`JobStopper` forwards SIGTERM and SIGINT sent to the sweep process to every running job as
SIGTERM (each saves last.ckpt at its current batch, resvae/run/signals.py), waits for them
(`grace_s`, then kills them) and exits with 128 + the signal, so that atexit writes the sweep's
report. A second signal kills the jobs at once. Jobs still running when the sweep process ends
for another reason are stopped the same way.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from omegaconf import DictConfig


def is_submitit_local(config: DictConfig) -> bool:
    """Whether the sweep runs its jobs with hydra-submitit-launcher's local launcher."""
    target = str((config.hydra.get("launcher") or {}).get("_target_", ""))
    return target.startswith("hydra_plugins.hydra_submitit_launcher.") and target.endswith(".LocalLauncher")


def _process_table() -> dict[int, int]:
    """pid -> parent pid of every live process this user can see (zombies, processes that have
    exited but that their parent has not reaped yet, are left out)."""
    table: dict[int, int] = {}
    proc = Path("/proc")
    if proc.is_dir():
        for entry in proc.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # gone meanwhile, or not ours to read
                continue
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses
            state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
            if state != "Z":
                table[int(entry.name)] = int(ppid)
        return table
    out = subprocess.run(["ps", "-A", "-o", "pid=,ppid=,stat="], capture_output=True, text=True).stdout
    for line in out.splitlines():
        pid, ppid, state = line.split()[:3]
        if not state.startswith("Z"):
            table[int(pid)] = int(ppid)
    return table


def local_jobs(root: int, submitit_folder: str) -> tuple[list[int], list[int]]:
    """(the running jobs of the submitit executor folder `submitit_folder` started below the
    process `root`, those jobs with their controllers and every process below them)."""
    from submitit.core.utils import JobPaths

    children: dict[int, list[int]] = {}
    for pid, ppid in _process_table().items():
        children.setdefault(ppid, []).append(pid)
    controllers = [
        pid
        for pid in children.get(root, [])
        if JobPaths(submitit_folder, job_id=str(pid)).submitted_pickle.is_file()
    ]
    jobs = [pid for controller in controllers for pid in children.get(controller, [])]
    found, todo = list(controllers), list(jobs)
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return sorted(jobs), sorted(found)


def _send(pids: Sequence[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
            os.kill(pid, sig)


class JobStopper:
    """In the sweep process: SIGTERM or SIGINT is forwarded once, as SIGTERM, to the running
    submitit_local jobs of the executor folder `submitit_folder` (the launcher's, with submitit's
    `%j` for the job id); the sweep then waits up to `grace_s` for the jobs and their controllers
    to exit, kills what is left, and exits with 128 + the signal (atexit writes the sweep's
    report). A second signal kills the jobs at once. The same happens to jobs still running when
    the sweep process ends otherwise (e.g. another job's failure raised in the launcher): none is
    left behind, untracked. The signal is sent once only: a job that has saved may still be
    closing its W&B run, which a second SIGTERM would cut short."""

    def __init__(
        self,
        submitit_folder: str,
        signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT),
        grace_s: float = 300.0,
    ) -> None:
        self.submitit_folder = submitit_folder
        self.signals, self.grace_s = list(signals), grace_s
        self.stopping: int | None = None

    @classmethod
    def for_sweep(cls, config: DictConfig, grace_s: float) -> JobStopper:
        """The stopper of a submitit_local sweep's jobs: its launcher's executor folder."""
        return cls(str(config.hydra.launcher.submitit_folder), grace_s=grace_s)

    def install(self) -> None:
        """Handle the stop signals in this process, and stop the jobs when it ends."""
        for sig in self.signals:
            signal.signal(sig, self._handle)
        atexit.register(self._at_exit)  # after the report's: runs before it

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping is not None:  # asked twice: do not wait
            _send(local_jobs(os.getpid(), self.submitit_folder)[1], signal.SIGKILL)
            raise SystemExit(128 + signum)
        self.stopping = signum
        self.stop(signal.Signals(signum).name)
        raise SystemExit(128 + signum)

    def _at_exit(self) -> None:
        if self.stopping is None:
            self.stopping = 0
            self.stop("the sweep process ends")

    def stop(self, why: str) -> None:
        """SIGTERM to the running jobs, then wait for them and their controllers (see the class)."""
        me = os.getpid()
        jobs = local_jobs(me, self.submitit_folder)[0]
        if jobs:
            print(
                f"{why}: stopping {len(jobs)} running job(s) (each saves checkpoints/last.ckpt; "
                "rerun the same command to resume); send SIGTERM again to kill them",
                file=sys.stderr,
                flush=True,
            )
            _send(jobs, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        while left := local_jobs(me, self.submitit_folder)[1]:
            if time.monotonic() >= deadline:
                print(f"still running after {self.grace_s:g} s, killed: {left}", file=sys.stderr, flush=True)
                _send(left, signal.SIGKILL)
                break
            time.sleep(0.2)
