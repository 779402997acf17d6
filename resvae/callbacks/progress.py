"""One plain line per epoch, for headless jobs and log files (no live progress bar)."""

from __future__ import annotations

import sys
import time

import lightning as L

from resvae import metrics as keys


class ProgressLines(L.Callback):
    """Prints `epoch 3/100  step 1200  train/loss 5123.4 ...  5,230 img/s  12.3 s`.

    The line for an epoch is printed when the next one starts (or training ends), because
    the module logs its epoch metrics after the callbacks' on_train_epoch_end has run.
    """

    def __init__(self) -> None:
        self._epoch_start = 0.0
        self._fit_start = 0.0
        self._images = 0
        self._pending: int | None = None
        self._seconds = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_start = self._epoch_start = time.perf_counter()  # a resumed epoch has no start

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._emit(trainer)
        self._epoch_start, self._images = time.perf_counter(), 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self._images += len(batch)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pending = trainer.current_epoch
        self._seconds = time.perf_counter() - self._epoch_start

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._emit(trainer)

    def _emit(self, trainer: L.Trainer) -> None:
        if self._pending is None or not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        parts = [f"epoch {self._pending + 1}/{trainer.max_epochs}", f"step {trainer.global_step}"]
        parts += [f"{k} {float(metrics[k]):.4g}" for k in keys.PROGRESS if k in metrics]
        rate = self._images / max(self._seconds, 1e-9)
        parts += [f"{rate:,.0f} img/s", f"{time.perf_counter() - self._fit_start:.1f} s"]
        print("  ".join(parts), file=sys.stdout, flush=True)
        self._pending = None
