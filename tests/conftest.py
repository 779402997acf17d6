"""Shared fixtures: run the Hydra app in a subprocess, as a user would. (Helpers that test modules
import live in tests/helpers/.)"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

# Two pytest workers share the cores: one intra-op thread each, here and in the training
# subprocesses the tests start (small tensors run no faster on two, and oversubscribed cores run
# 5-15x slower).
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_thread():
    """Small-tensor tests run on one intra-op thread: faster than two for tensors this small,
    and immune to the oversubscription that makes two-thread runs 5-15x slower when other
    processes share the cores. The previous setting is restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def run_train(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess]:
    """Run `python -m resvae.cli.train ARGS` in tmp_path with W&B offline; outputs land in tmp_path."""

    def run(*args: str, check: bool = True, timeout: float = 300, env: dict | None = None):
        full_env = {
            **os.environ,
            "WANDB_MODE": "offline",
            "WANDB_SILENT": "true",
            "HYDRA_FULL_ERROR": "0",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        full_env.pop("WANDB_API_KEY", None)
        proc = subprocess.run(
            [sys.executable, "-m", "resvae.cli.train", *args],
            cwd=tmp_path,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"resvae.cli.train {' '.join(args)} failed ({proc.returncode}):\n"
                f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
            )
        return proc

    return run
