"""Stop at a safe point when the cluster asks: save last.ckpt at the current batch, then exit.

SIGTERM (SLURM's preemption and scancel signal) and any other configured signal (submitit's
SIGUSR2 before a time limit) are caught while training runs. At the end of the current
training batch the run saves `last.ckpt` and stops with `Preempted`; a rerun of the same
command continues from that batch. When the signal comes during an epoch's last batch (or its
validation), the epoch is finished first, validated and logged, and the checkpoint is written
at its end: a checkpoint at an epoch's last batch would resume with that epoch never validated.
A signal during the last epoch's validation stops the run at the end of training, before the
test: the rerun finds training done and only tests.
A handler that was installed before training (e.g. submitit's requeue on SIGUSR2) still runs,
after the checkpoint is written.

Lightning's own SIGTERM handling is replaced while training runs: it stops in the middle of a
validation, whose checkpoint would resume with that epoch never validated. Under DDP
(several processes) Lightning's handling stays, because it coordinates the ranks.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L


class Preempted(SystemExit):
    """Training stopped on a signal after saving last.ckpt; exit code 128 + the signal number."""

    def __init__(self, signum: int, path: Path) -> None:
        super().__init__(128 + signum)
        self.signum, self.path = signum, path

    def __str__(self) -> str:
        return f"stopped by {signal.Signals(self.signum).name} after saving {self.path}"


class Preemption(L.Callback):
    def __init__(self, checkpoint_path: str | Path, signals: Sequence[str] = ("SIGTERM",)) -> None:
        self.path = Path(checkpoint_path)
        self.signals = [
            signal.Signals[name] if isinstance(name, str) else signal.Signals(name) for name in signals
        ]
        self.received: int | None = None
        self._at_epoch_end = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size > 1:
            return
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if self.received is None or self._at_epoch_end:
            return
        if batch_idx + 1 < trainer.num_training_batches:
            self._save_and_stop(trainer)
        trainer.should_stop = True  # finish this epoch (validation, its metrics), then on_train_end
        self._at_epoch_end = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # also a signal after the last training batch (the last validation): no batch end follows
        if self._at_epoch_end or self.received is not None:
            self._save_and_stop(trainer)

    def _save_and_stop(self, trainer: L.Trainer) -> None:
        signum, self.received = self.received, None
        trainer.save_checkpoint(self.path)
        print(
            f"{signal.Signals(signum).name}: saved {self.path}; rerun the same command to resume", flush=True
        )
        previous = self._previous.get(signum)
        if isinstance(previous, StopNow):  # ours: only what it wraps, then Preempted below
            previous = previous.outer
        if callable(previous):
            previous(signum, None)
        raise Preempted(signum, self.path)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()


class StopNow:
    """The job's handler outside training (where Preemption, above, saves first): run the handler
    that was there before (submitit's: its SIGUSR2 handler requeues and exits by itself, its
    SIGTERM handler only logs), then end at once, recorded as interrupted, the folder released."""

    def __init__(self, outer: Any) -> None:
        self.outer = outer
        self.received: int | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum
        if callable(self.outer):
            self.outer(signum, frame)
        raise SystemExit(128 + signum)


def signal_exit(error: BaseException, stoppers: Sequence[StopNow]) -> BaseException:
    """What ended an attempt: where a StopNow fired, its SystemExit even when another error
    surfaced instead (the exit was raised inside a library mid-update, e.g. OmegaConf restoring
    its flags, whose cleanup then failed), so the run is recorded interrupted, not failed."""
    fired = [s.received for s in stoppers if s.received is not None]
    if fired and not isinstance(error, SystemExit):
        return SystemExit(128 + fired[0])
    return error
