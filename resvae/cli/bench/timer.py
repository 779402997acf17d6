"""WindowTimer: the real loop's timings, synchronised, written by the process that trains.

resvae-bench adds it to resvae-train's callbacks (`+callbacks.bench_window._target_=...`). It
times the same window as the in-process rows: steps [warmup, warmup + steps) of the first
epoch, and each epoch's boundary: from the end of its last training step to the start of the
next epoch (or the end of training), i.e. validation, checkpoints, sample grids, epoch-end
metrics and logging, plus validation alone. Every clock read synchronises the device first
(this syncs: a few times per epoch, never per step), so work the host queued before a boundary
is charged to the side that queued it: with a captured step the host runs many steps ahead,
and without the sync that backlog would land in validation.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from resvae.run.numerics import effective_float32


class WindowTimer(L.Callback):
    def __init__(self, warmup: int, steps: int, path: str) -> None:
        if warmup < 1 or steps < 1:
            raise ValueError("WindowTimer: warmup and steps must be >= 1")
        self.warmup, self.steps, self.path = warmup, steps, Path(path)
        self.seen = 0
        self._train_start = self._window_start = self._val_start = 0.0
        self._last_step_end: float | None = None  # the end of an epoch's last training step
        self.record: dict[str, Any] = {"epochs": []}

    def _now(self, pl_module: L.LightningModule) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)  # this syncs: at window and epoch boundaries
        return time.perf_counter()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._train_start = self._now(pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if self.seen == self.warmup:
            self._window_start = self._now(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.seen += 1
        if self.seen == 1:  # the first step: capture, compilation and cuDNN autotuning included
            self.record["warmup_seconds"] = self._now(pl_module) - self._train_start
        if self.seen == self.warmup + self.steps:
            now = self._now(pl_module)
            self.record.update(window_seconds=now - self._window_start, window_steps=self.steps)
            self.record["window_images"] = self.steps * len(batch)
        if batch_idx + 1 == trainer.num_training_batches:
            self._last_step_end = self._now(pl_module)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._val_start = self._now(pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            seconds = self._now(pl_module) - self._val_start
            self.record["epochs"].append({"epoch": trainer.current_epoch, "val_seconds": seconds})

    def _close_boundary(self, pl_module: L.LightningModule) -> None:
        if self._last_step_end is None:
            return
        seconds = self._now(pl_module) - self._last_step_end
        self._last_step_end = None
        if self.record["epochs"]:
            self.record["epochs"][-1]["boundary_seconds"] = seconds

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close_boundary(pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close_boundary(pl_module)
        self.record.update(
            float32=effective_float32(),  # as resvae-train set it from the run's config
            lightning=L.__version__,
        )
        if trainer.is_global_zero:
            self.path.write_text(json.dumps(self.record, indent=2) + "\n")
