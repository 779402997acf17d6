"""Starting resvae-train and the other console scripts in a subprocess, as a user would, and
waiting for them. Two kinds of training process:

- piped (`start_piped`, `wait_for_piped`, `wait_for_first_checkpoint`): stdout and stderr on one
  pipe, read with proc.communicate() or proc.stdout;
- logged (`start_logged`, `wait_for_logged`, `finish_logged`): stdout and stderr in a file (a pipe
  nobody reads would block a long run, such as a sweep).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.helpers.config import TINY
from tests.helpers.records import only_run_dir


def quiet_env() -> dict[str, str]:
    """W&B offline and silent; one intra-op thread (fast for tensors this small, and two
    processes then share two cores without oversubscription)."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0"}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WANDB_API_KEY", None)
    return env


def train_runs(root: Path, runs: dict[str, list[str]], timeout: float = 300) -> dict[str, Path]:
    """Train each `name: overrides` run (TINY, logger=csv) with the real app in its own folder below
    `root`, all at once (one process each); returns each run's folder."""
    procs = {}
    for name, overrides in runs.items():
        cwd = root / name
        cwd.mkdir(parents=True)
        cmd = [sys.executable, "-m", "resvae.cli.train", *TINY, "logger=csv", *overrides]
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
        procs[name] = (cwd, subprocess.Popen(cmd, cwd=cwd, env=quiet_env(), **pipes))
    outputs = {name: proc.communicate(timeout=timeout)[0] for name, (_, proc) in procs.items()}
    for name, (_, proc) in procs.items():
        assert proc.returncode == 0, f"training {name} failed ({proc.returncode}):\n{outputs[name][-6000:]}"
    return {name: only_run_dir(cwd) for name, (cwd, _) in procs.items()}


def run_cli(module: str, *args: str, cwd: Path) -> subprocess.Popen:
    """Start `python -m MODULE ARGS` (one process); .communicate() it."""
    cmd = [sys.executable, "-m", module, *args]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    return subprocess.Popen(cmd, cwd=cwd, env=quiet_env(), **pipes)


def one_error_line(stderr: str, prog: str = "resvae-eval") -> str:
    """The one line `PROG: error: ...` that is all of stderr (no traceback); fails otherwise."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), stderr
    return lines[0]


# ----------------------------------------------------------------------------- piped training runs
def start_piped(root: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """`python -m resvae.cli.train ARGS` in root, W&B offline; stdout and stderr on proc.stdout."""
    full_env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "resvae.cli.train", *args],
        cwd=root,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for_piped(predicate: Callable[[], object], proc: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until predicate() is true; fails if the process (of start_piped) ends first or time runs out."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended first:\n{proc.stdout.read()}")
        time.sleep(0.05)
    raise AssertionError("timed out")


def wait_for_first_checkpoint(root: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    """Wait until the run (of start_piped) started in root has written its first last.ckpt."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if list((root / "outputs").glob("**/checkpoints/last.ckpt")):
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended before its first checkpoint:\n{proc.stdout.read()}")
        time.sleep(0.05)
    raise AssertionError("no checkpoint in time")


# ----------------------------------------------------------------------------- logged training runs
def start_logged(root: Path, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Path]:
    """`python -m resvae.cli.train ARGS` in root, W&B offline and silent; stdout and stderr go to the
    file returned with the process."""
    env = {
        **os.environ,
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    env.pop("WANDB_API_KEY", None)
    out = root / f"out-{time.monotonic_ns()}.txt"
    with open(out, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "resvae.cli.train", *args],
            cwd=root,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    return proc, out


def finish_logged(proc: subprocess.Popen, out: Path, timeout: float = 300) -> str:
    """Wait for the process (of start_logged) to end; its output."""
    proc.wait(timeout=timeout)
    return out.read_text()


def wait_for_logged(
    condition: Callable[[], bool], proc: subprocess.Popen, out: Path, what: str, timeout=180
) -> None:
    """Wait until condition() is true; fails, naming `what`, if the process (of start_logged) ends
    first, and kills it if time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            raise AssertionError(f"ended ({proc.returncode}) before {what}:\n{out.read_text()[-4000:]}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"no {what} within {timeout} s:\n{out.read_text()[-4000:]}")
