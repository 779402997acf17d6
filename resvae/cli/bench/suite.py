"""Rows of the benchmark: each loop of each (depth, batch), timed over the same window."""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from resvae.cli.bench.common import (
    EPOCH_IMAGES,
    Numerics,
    build_model,
    compose_config,
    release,
    resolve_numerics,
    synchronize,
    train_gflop_per_image,
)
from resvae.cli.bench.loops import in_process_row
from resvae.cli.bench.peaks import mfu, peak_tflops
from resvae.cli.bench.real_loop import RealLoopError, lightning_row
from resvae.data.device_batches import DeviceBatches

LOOPS = ("bare", "step", "step-captured", "lightning", "lightning-captured")
CUDA_ONLY = ("step-captured", "lightning-captured")
REAL_LOOPS = ("lightning", "lightning-captured")


@dataclass
class Settings:
    device: torch.device
    warmup: int
    steps: int
    val_images: int
    precision: str = "config"  # config (the trainer's), 32-true or bf16-mixed
    repeat: int = 1
    peak_tflops: float | None = None
    deadline: float | None = None  # time.monotonic() after which no further row starts
    workdir: Path | None = None

    def seconds_left(self) -> float:
        return math.inf if self.deadline is None else self.deadline - time.monotonic()


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def measure(
    overrides: Sequence[str], depth: int, batch: int, loops: Sequence[str], settings: Settings,
    case: str = "", steps: int | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """One row per loop; a loop that cannot run here is a row with `not_run` (its reason)."""
    device, steps = settings.device, steps or settings.steps
    # the training process's data too (synthetic images), so data.image_size= works in both
    cfg = compose_config([*overrides, "data=synthetic", f"model.arch.depth={depth}"])
    numerics = resolve_numerics(cfg, settings.precision, device)
    gflop = train_gflop_per_image(build_model(cfg, device), device)
    peak = peak_tflops(device_name(device), numerics.math, settings.peak_tflops)
    rows = []
    for loop in loops:
        row: dict[str, Any] = {
            "case": case, "depth": depth, "batch": batch, "loop": loop, "device": device_name(device),
            "precision": numerics.precision, "math": numerics.math, "warmup": settings.warmup,
            "steps": steps, "gflop_img": round(gflop, 3), "peak_tflops": peak,
        }  # fmt: skip
        if loop in CUDA_ONLY and device.type != "cuda":
            row["not_run"] = "no CUDA"
        elif settings.seconds_left() <= 0:
            row["not_run"] = "time budget"
        else:
            row.update(_best_of(loop, overrides, cfg, numerics, depth, batch, steps, settings))
        if "img_s" in row:
            row["mfu"] = _round(mfu(row["img_s"], gflop, peak))
        rows.append(row)
        print(_progress(row), flush=True)
        print(json.dumps(row), flush=True)  # the whole row, so a log cut off mid-run keeps it
        release(device)
    return rows


def _best_of(
    loop: str, overrides: Sequence[str], cfg: DictConfig, numerics: Numerics, depth: int, batch: int,
    steps: int, settings: Settings,
) -> dict[str, Any]:  # fmt: skip
    """The fastest of `repeat` runs (other processes only ever slow a run down), rounded."""
    results = []
    for _ in range(settings.repeat):
        try:
            if loop in REAL_LOOPS:
                workdir = Path(tempfile.mkdtemp(prefix="real-", dir=settings.workdir))
                timeout = max(120.0, min(settings.seconds_left() + 120.0, 1800.0))
                result = lightning_row(
                    overrides, depth, batch, settings.warmup, steps, settings.val_images,
                    loop == "lightning-captured", settings.device, numerics, workdir, timeout,
                )  # fmt: skip
            else:
                result = in_process_row(loop, cfg, settings.device, numerics, batch, settings.warmup, steps)
        except (RealLoopError, torch.cuda.OutOfMemoryError) as err:
            return {"not_run": f"error: {str(err).strip().splitlines()[-1][:200]}"}
        if "skipped" in result:
            return {"not_run": result["skipped"]}
        results.append(result)
    best = min(results, key=lambda r: r["ms_step"])
    return {k: _round(v) for k, v in best.items()}


def _progress(row: dict[str, Any]) -> str:
    where = f"{row['case'] + ' ' if row['case'] else ''}d{row['depth']} b{row['batch']} {row['loop']}"
    if "not_run" in row:
        return f"{where}: not run ({row['not_run']})"
    return f"{where}: {row['img_s']:,.0f} img/s, {row['ms_step']} ms/step"


def data_path_row(device: torch.device, batch: int, n: int = EPOCH_IMAGES) -> dict[str, Any]:
    """The loader alone: a shuffled epoch of uint8 batches gathered from a resident set."""
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, device=device)
    batches = DeviceBatches(images, batch, shuffle=True, drop_last=True)
    for _ in batches:  # warm-up
        pass
    synchronize(device)
    start = time.perf_counter()
    count = sum(len(b) for b in batches)
    synchronize(device)
    return {
        "loop": "data_path",
        "device": device_name(device),
        "img_s": _round(count / (time.perf_counter() - start)),
    }


def _round(value: Any) -> Any:
    return float(f"{value:.4g}") if isinstance(value, float) else value
