"""`summary.json`: the one file that describes a run (DESIGN.md), rewritten atomically.

It is written when training starts (status "running"), after fit ("finished"), after test, and
on an exception ("failed", with the error). The report tool reads nothing else.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch

from resvae.io import atomic_write_json

SUMMARY_FILE = "summary.json"


def read_summary(folder: str | Path) -> dict[str, Any] | None:
    path = Path(folder) / SUMMARY_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def _number(value: Any) -> float | None:
    if value is None:
        return None
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)


class RunSummary(L.Callback):
    """Writes summary.json; `previous` (the folder's existing summary) is kept and updated, and
    the time and image totals travel in checkpoints, so a resumed run reports the whole run."""

    def __init__(
        self,
        dirpath: str | None = None,
        extra: Mapping[str, Any] | None = None,
        previous: Mapping[str, Any] | None = None,
    ) -> None:
        self.dirpath = dirpath
        self.extra = dict(extra or {})
        self.data: dict[str, Any] = dict(previous or {})
        self._epoch_start = self._val_start = self._epoch_val = 0.0
        self._epoch_images = 0
        self._fitting = False
        self.train_seconds = self.val_seconds = 0.0
        self.images = 0
        self.epochs_timed: list[dict[str, float]] = []  # per epoch: images, train and val seconds

    def path(self, trainer: L.Trainer) -> Path:
        return Path(self.dirpath or trainer.default_root_dir) / SUMMARY_FILE

    def state_dict(self) -> dict[str, Any]:
        return {
            "train_seconds": self.train_seconds,
            "val_seconds": self.val_seconds,
            "images": self.images,
            "epochs_timed": self.epochs_timed[-20:],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train_seconds = float(state_dict.get("train_seconds", 0.0))
        self.val_seconds = float(state_dict.get("val_seconds", 0.0))
        self.images = int(state_dict.get("images", 0))
        self.epochs_timed = list(state_dict.get("epochs_timed", []))

    # ------------------------------------------------------------------ timing
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start, self._epoch_val = time.perf_counter(), 0.0  # a resumed epoch has no start

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.perf_counter()
        self._epoch_val = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.images += len(batch)
        self._epoch_images += len(batch)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        seconds = time.perf_counter() - self._val_start
        self.val_seconds += seconds
        self._epoch_val += seconds

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seconds = time.perf_counter() - self._epoch_start - self._epoch_val
        self.train_seconds += seconds
        self.epochs_timed.append(
            {
                "images": self._epoch_images,
                "train_seconds": round(seconds, 4),
                "val_seconds": round(self._epoch_val, 4),
            }
        )
        self._epoch_images = 0

    # ------------------------------------------------------------------ writing
    def _collect(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        arch = pl_module.arch
        data = {
            **self.data,
            "model": type(pl_module).__name__,
            "depth": arch.depth,
            "blocks": list(arch.blocks),
            "width": arch.width,
            "block": arch.block,
            "shortcut": arch.shortcut,
            "preact": arch.preact,
            "latent_dim": arch.latent_dim,
            "likelihood": pl_module.likelihood.name,
            "bpd_is_likelihood": pl_module.likelihood.valid_bpd and type(pl_module).__name__ == "VAE",
            "params": pl_module.num_parameters,
            "device": _device_name(pl_module.device),
            "precision": str(trainer.precision),
            **self.extra,
        }
        if self._fitting:  # a test-only attempt leaves the training record as it was
            data.update(
                epochs=trainer.current_epoch,
                global_step=trainer.global_step,
                max_epochs=trainer.max_epochs,
                train_seconds=round(self.train_seconds, 3),
                val_seconds=round(self.val_seconds, 3),
                images_per_second=round(self.images / self.train_seconds, 1) if self.train_seconds else None,
                skipped_steps=int(pl_module.skipped_steps),
                epochs_timed=self.epochs_timed[-20:],  # the latest epochs' images and seconds
                compile=pl_module.hparams.get("compile", "none"),
                compile_first_call_seconds=getattr(pl_module.train_forward, "first_call_seconds", None),
                compile_fell_back=getattr(pl_module.train_forward, "fell_back", False),
            )
            ckpt = trainer.checkpoint_callback
            if ckpt is not None and getattr(ckpt, "best_model_score", None) is not None:
                data["best_val_loss"] = _number(ckpt.best_model_score)
        metrics = trainer.callback_metrics
        for key, name in METRICS:
            if name in metrics:
                data[key] = _number(metrics[name])
        return data

    def write(self, trainer: L.Trainer, pl_module: L.LightningModule, **fields: Any) -> None:
        self.data.update(fields)
        if trainer.is_global_zero:
            self.data = self._collect(trainer, pl_module)
            atomic_write_json(self.path(trainer), self.data)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fitting = True
        self.write(trainer, pl_module, status="running", error=None, started_at=_now())

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # fit returned before max_epochs without an error: EarlyStopping (or another callback)
        # stopped it; Lightning's stopped_epoch cannot tell a stop at epoch 0 from no stop
        stopped_early = trainer.max_epochs not in (None, -1) and trainer.current_epoch < trainer.max_epochs
        self.write(trainer, pl_module, status="finished", stopped_early=stopped_early, finished_at=_now())

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.write(trainer, pl_module, tested=True)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self.write(
            trainer,
            pl_module,
            status=end_status(exception),
            error=f"{type(exception).__name__}: {exception}",
            finished_at=_now(),
        )


METRICS = (
    ("train_loss", "train/loss"),
    ("val_loss", "val/loss"),
    ("val_bpd", "val/bpd"),
    ("val_psnr", "val/psnr"),
    ("val_ssim", "val/ssim"),
    ("test_bpd", "test/bpd"),
    ("test_nll_iw", "test/nll_iw"),
    ("test_bpd_iw", "test/bpd_iw"),
)


def end_status(error: BaseException) -> str:
    """summary.json's status for a run ended by `error`: SIGTERM (a SystemExit) and Ctrl-C
    interrupt a run that can be resumed; anything else fails it."""
    return "interrupted" if isinstance(error, (KeyboardInterrupt, SystemExit)) else "failed"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type
