"""What a run needs to continue exactly where it stopped (DESIGN.md: resume after preemption).

- RNGState: Python, NumPy and torch (CPU and CUDA) generator states go into every checkpoint
  and are restored when training restarts (after the sanity check, which draws random numbers).
- PreemptionCheckpoint: on SIGTERM (what SLURM sends before a requeue or preemption) Lightning
  stops after the current batch; this saves checkpoints/last.ckpt right there.
- MetricsLedger: each checkpoint carries the epoch metrics logged so far, so that a resumed run
  rebuilds metrics.csv with exactly the epochs the checkpoint has seen (no duplicates, none
  missing, whatever happened between the checkpoint and the kill).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

LEDGER_PREFIXES = ("train/", "val/")


class RNGState(L.Callback):
    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        # tensors, ints and tuples only: Lightning loads checkpoints with weights_only=True
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        return {
            "python": random.getstate(),
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending is None:
            return
        state, self._pending = self._pending, None
        random.setstate(state["python"])
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])


class PreemptionCheckpoint(L.Callback):
    """Also lets a validation run that SIGTERM interrupts finish first: a checkpoint taken
    mid-validation would resume into the next epoch with this epoch never validated (no best
    checkpoint, early-stopping or plateau update for it)."""

    def __init__(self, dirpath: str | Path, filename: str = "last.ckpt") -> None:
        self.path = Path(dirpath) / filename
        self._deferred = False

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:  # noqa: ANN001
        if trainer.state.fn == "fit" and not trainer.sanity_checking and trainer.received_sigterm:
            trainer._signal_connector.received_sigterm = False  # Lightning checks it right after this hook
            self._deferred = True

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._deferred:
            trainer._signal_connector.received_sigterm = True  # stops at the next safe point
            self._deferred = False

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, SIGTERMException) and trainer.state.fn == "fit":
            trainer.save_checkpoint(self.path)
            print(f"SIGTERM: saved {self.path}; rerun the same command to resume", flush=True)


class MetricsLedger(L.Callback):
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self._trainer: L.Trainer | None = None
        self._ending_epoch: int | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning runs this before the module's on_train_epoch_end (which logs train/*) and
        # before ModelCheckpoint's (which saves): a checkpoint written from now on in this
        # epoch has the epoch's validation and training metrics. One saved earlier (SIGTERM
        # at the last batch, before validation) must not record the epoch.
        self._ending_epoch = trainer.current_epoch

    def _record_finished_epoch(self) -> None:
        trainer = self._trainer
        if trainer is None:
            return
        epoch = trainer.current_epoch
        if self._ending_epoch != epoch or (self.rows and self.rows[-1]["epoch"] >= epoch):
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(LEDGER_PREFIXES)}
        self.rows.append({"epoch": epoch, "step": trainer.global_step, **metrics})

    def state_dict(self) -> dict[str, Any]:
        self._record_finished_epoch()  # called as each checkpoint is written
        return {"rows": list(self.rows)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict.get("rows", []))
