"""Shared fixtures: run the Hydra app in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# Two pytest workers share the cores: one intra-op thread each, here and in the training
# subprocesses the tests start (small tensors run no faster on two, and oversubscribed cores run
# 5-15x slower).
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

# Fast, quiet end-to-end runs: the smoke experiment with fewer images.
TINY = ["experiment=smoke", "data.train_size=128", "data.val_size=32", "data.test_size=32"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def run_dirs(root: Path) -> dict[str, Path]:
    """Run folders (those with a summary.json) below root, keyed by folder name."""
    return {p.parent.name: p.parent for p in root.glob("**/summary.json")}


def only_run_dir(root: Path) -> Path:
    dirs = run_dirs(root)
    assert len(dirs) == 1, dirs
    return next(iter(dirs.values()))


def cpu_trainer(**kwargs) -> L.Trainer:
    """A quiet CPU Trainer for in-process tests (no logger, bar or model summary)."""
    defaults = {
        "default_root_dir": tempfile.mkdtemp(prefix="resvae-test-"),  # never the repository
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return L.Trainer(**{**defaults, **kwargs})


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
