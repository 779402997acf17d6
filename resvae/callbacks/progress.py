"""One plain line per epoch, for headless jobs and log files (no live progress bar).

The lines go through logging ("resvae.progress"), so they land in the run's log file as well as
on the console (Hydra's job logging), under submitit too.
"""

from __future__ import annotations

import logging
import math
import time

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping

from resvae import metrics as keys

log = logging.getLogger("resvae.progress")


def at_quarter(done: int, total: int) -> bool:
    """Whether `done` of `total` steps crosses a quarter (or ends): when a log gets a progress line."""
    return done == total or done * 4 // total != (done - 1) * 4 // total


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


class ProgressLines(L.Callback):
    """Logs `epoch 3/100  step 1200  train/loss 5123.4 ...  5,230 img/s  elapsed 12 s  eta 5.1 min`.

    The ETA is the epochs left times the mean of the latest epochs' wall time; where early
    stopping applies it also says when the run ends if val/loss does not improve again. The
    line for an epoch is written when the next one starts (or training ends), because the
    module logs its epoch metrics after the callbacks' on_train_epoch_end has run.
    """

    def __init__(self) -> None:
        self._epoch_start = 0.0
        self._fit_start = 0.0
        self._images = 0
        self._pending: int | None = None
        self._seconds = 0.0
        self._epoch_walls: list[float] = []  # the latest epochs' wall time, validation included
        # validations since val/loss last improved by EarlyStopping's min_delta (counted here from
        # the logged metric: EarlyStopping keeps its own count in no public attribute)
        self._best = math.inf
        self._checks_without_improvement = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_start = self._epoch_start = time.perf_counter()  # a resumed epoch has no start

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        now = time.perf_counter()
        if self._pending is not None:
            self._epoch_walls = [*self._epoch_walls[-2:], now - self._epoch_start]
        self._emit(trainer)
        self._epoch_start, self._images = now, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self._images += len(batch)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pending = trainer.current_epoch
        self._seconds = time.perf_counter() - self._epoch_start

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._emit(trainer)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:  # noqa: ANN001
        """The test (the IW bound can take minutes): a line at each quarter of its batches."""
        total = int(sum(trainer.num_test_batches)) if trainer.num_test_batches else 0
        done = batch_idx + 1
        if trainer.is_global_zero and total and at_quarter(done, total):
            log.info("test: batch %d/%d (%d%%)", done, total, 100 * done // total)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loss = trainer.callback_metrics.get(keys.VAL_LOSS)
        if trainer.sanity_checking or loss is None:
            return
        stopper = next((c for c in trainer.callbacks if isinstance(c, EarlyStopping)), None)
        min_delta = abs(stopper.min_delta) if stopper is not None else 0.0
        if float(loss) < self._best - min_delta:
            self._best, self._checks_without_improvement = float(loss), 0
        else:
            self._checks_without_improvement += 1

    def _emit(self, trainer: L.Trainer) -> None:
        if self._pending is None or not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        parts = [f"epoch {self._pending + 1}/{trainer.max_epochs}", f"step {trainer.global_step}"]
        parts += [f"{k} {float(metrics[k]):.4g}" for k in keys.PROGRESS if k in metrics]
        rate = self._images / max(self._seconds, 1e-9)
        parts += [f"{rate:,.0f} img/s", f"elapsed {minutes(time.perf_counter() - self._fit_start)}"]
        parts += self._eta(trainer)
        log.info("  ".join(parts))
        self._pending = None

    def _eta(self, trainer: L.Trainer) -> list[str]:
        left = (trainer.max_epochs or 0) - (self._pending + 1)
        if left <= 0 or not self._epoch_walls or trainer.max_epochs in (None, -1):
            return []
        epoch = sum(self._epoch_walls) / len(self._epoch_walls)
        eta = [f"eta {minutes(left * epoch)}"]
        stopper = next((c for c in trainer.callbacks if isinstance(c, EarlyStopping)), None)
        if stopper is not None and stopper.monitor == keys.VAL_LOSS:
            checks_left = max(stopper.patience - self._checks_without_improvement, 0)
            stop = min(left, checks_left * (trainer.check_val_every_n_epoch or 1))
            if stop < left:
                eta.append(f"({minutes(stop * epoch)} if val/loss does not improve)")
        return eta
