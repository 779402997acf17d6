"""The real loop: resvae-train itself in a subprocess (Lightning's loop, validation, checkpoints
written in the background, logging), timed by WindowTimer inside that process.

Two epochs of warmup + steps steps each, on synthetic data: the window is steps
[warmup, warmup + steps) of the first epoch (the same window as the in-process rows); the
epoch-boundary cost (validation, checkpoints, grids, epoch-end logging) is the second epoch's,
after validation has compiled and autotuned once. Validation runs on `val_images` images and
is scaled to 10,000 in the 50,000-image epoch figure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from resvae.cli.bench.common import EPOCH_IMAGES, VAL_IMAGES, Numerics


class RealLoopError(RuntimeError):
    """resvae-train failed or timed out; the message ends with its output's tail."""


def train_args(
    overrides: Sequence[str], depth: int, batch: int, warmup: int, steps: int, val_images: int,
    capture: bool, device: torch.device, numerics: Numerics, workdir: Path, name: str,
) -> list[str]:  # fmt: skip
    timer = "+callbacks.bench_window"
    return [
        *overrides,
        "hydra.mode=RUN",
        "data=synthetic",
        f"model.arch.depth={depth}",
        f"data.batch_size={batch}",
        f"data.train_size={batch * (warmup + steps) + val_images}",
        "data.val_source=train",  # the experiments that validate on the test split would use test_size
        f"data.val_size={val_images}",
        f"data.test_size={batch}",
        "trainer.max_epochs=2",
        "trainer.num_sanity_val_steps=0",
        f"trainer.precision={numerics.precision}",
        "callbacks.early_stopping.patience=1000",
        "logger=csv",
        "test=false",
        f"output_root={workdir}",
        f"name={name}",
        "resume=never",
        f"model.train_step.capture={'cuda_graph' if capture else 'none'}",
        f"trainer.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}",
        f"{timer}._target_=resvae.cli.bench.timer.WindowTimer",
        f"{timer}.warmup={warmup}",
        f"{timer}.steps={steps}",
        f"{timer}.path={workdir / 'window.json'}",
    ]


def lightning_row(
    overrides: Sequence[str], depth: int, batch: int, warmup: int, steps: int, val_images: int,
    capture: bool, device: torch.device, numerics: Numerics, workdir: Path, timeout_s: float,
) -> dict[str, Any]:  # fmt: skip
    name = f"bench_d{depth}_b{batch}_{'captured' if capture else 'eager'}"
    args = train_args(
        overrides, depth, batch, warmup, steps, val_images, capture, device, numerics, workdir, name
    )
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())  # the same intra-op threads as in-process rows
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "resvae.cli.train", *args],
            env=env, capture_output=True, text=True, timeout=timeout_s,
        )  # fmt: skip
    except subprocess.TimeoutExpired as err:
        raise RealLoopError(f"resvae-train ran past {timeout_s:.0f} s") from err
    if proc.returncode != 0:
        raise RealLoopError(f"resvae-train failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    try:
        timing = json.loads((workdir / "window.json").read_text())
        (summary_path,) = workdir.glob(f"{name}/**/summary.json")
        return figures(timing, json.loads(summary_path.read_text()), val_images)
    except (OSError, ValueError, KeyError) as err:  # a run that ended without a full record
        raise RealLoopError(
            f"resvae-train left no complete timing record ({type(err).__name__}: {err})"
        ) from err


def figures(timing: dict[str, Any], summary: dict[str, Any], val_images: int) -> dict[str, Any]:
    """The row from WindowTimer's record (synchronised) and the run's summary.json."""
    seconds = timing["window_seconds"]
    img_s = timing["window_images"] / seconds
    last = timing["epochs"][-1]  # the second epoch's boundary: validation warm already
    val = last["val_seconds"] * VAL_IMAGES / val_images  # scaled to the 10,000-image test set
    boundary = last["boundary_seconds"] - last["val_seconds"] + val
    epoch = EPOCH_IMAGES / img_s + boundary
    timed = summary.get("epochs_timed") or [{}]
    return {
        "img_s": img_s,
        "ms_step": 1e3 * seconds / timing["window_steps"],
        "warmup_s": timing.get("warmup_seconds"),
        "compile_eval_s": summary.get("compile_eval_first_call_seconds"),  # validation's, apart
        "peak_mem_gib": summary.get("peak_memory_gib"),
        "epoch_50k_s": epoch,
        "val_fraction": boundary / epoch,
        "boundary_s": last["boundary_seconds"],
        "checkpoint_s": timed[-1].get("checkpoint_seconds"),
        "app_img_s": summary.get("images_per_second"),  # the process's own figure, unsynchronised
        "captured": summary.get("captured"),
        "float32": timing.get("float32"),
    }
