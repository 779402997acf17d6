"""What each checkpoint carries besides weights and Lightning's own state.

- RNGState: the Python, NumPy and torch (CPU and CUDA) generator states, as tensors, ints and
  tuples (checkpoints load with weights_only=True), restored at train start, after the sanity
  check (which draws random numbers), so a resumed run draws what an uninterrupted one would.
- RunTag: the run's config hash and config, so the run a folder holds is known even when its
  summary.json is lost.
- FiniteBestCheckpoint: best.ckpt, never holding an epoch whose val/loss was not finite.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from resvae.run.checkpoints import CHECKPOINT_TAG
from resvae.run.folder import Run


class RNGState(L.Callback):
    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
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


class RunTag(L.Callback):
    def __init__(self, run: Run) -> None:
        self.run = run

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        tag = checkpoint.setdefault(CHECKPOINT_TAG, {})
        tag["run"] = {
            "config_hash": self.run.config_hash,
            "config": self.run.config,
            "data": self.run.data_fingerprint,
        }


class FiniteBestCheckpoint(ModelCheckpoint):
    """best.ckpt that only a finite score can become. Lightning's ModelCheckpoint stores a NaN
    score as inf and saves it while it has no best yet, so a run that diverged at its first
    validation would leave its NaN weights as best.ckpt."""

    def check_monitor_top_k(self, trainer: L.Trainer, current: torch.Tensor | None = None) -> bool:
        if current is not None and not bool(torch.isfinite(current).all()):
            return False
        return super().check_monitor_top_k(trainer, current)
