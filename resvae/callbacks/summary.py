"""`summary.json`: the one file that describes a run, kept up to date through the Run.

Written when training starts (status "running"), after each validation, after fit
("finished", or "failed" when the run diverged), after the test, and on an exception ("failed"
or "interrupted", with the error). Times, image counts and the minima of the epoch losses
travel in checkpoints, so a resumed run reports the whole run. Non-finite numbers are written
as null (JSON has no NaN) and never pass for a result.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch

from resvae import metrics as keys
from resvae.run.folder import Run, end_status, local_time
from resvae.run.numerics import effective_float32


def finite_number(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value.item()) if isinstance(value, torch.Tensor) else float(value)
    return value if math.isfinite(value) else None


class RunSummary(L.Callback):
    def __init__(
        self,
        run: Run,
        extra: Mapping[str, Any] | None = None,
        mirror: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        """mirror: also receives the dashboard's fields after each write (the W&B run summary)."""
        self.run = run
        self.mirror = mirror
        self.extra = dict(extra or {})
        self._segment_start = self._val_start = self._train_start = 0.0
        self._epoch: dict[str, Any] | None = None
        self._epoch_checkpoint = 0.0
        self.train_seconds = self.val_seconds = 0.0
        self.images = 0
        self.epochs_timed: list[dict[str, float]] = []  # per epoch: images; train, val, checkpoint seconds
        self._warmup: float | None = None
        self._last_batch_end: float | None = None
        self._step_seconds: list[float] = []
        self._stage: str | None = None
        self.minima: dict[str, float] = {}

    def state_dict(self) -> dict[str, Any]:
        return {
            # the record so far, so that a run whose summary.json is lost gets it back
            "summary": {k: v for k, v in self.run.summary.items() if k != "config"},
            "train_seconds": self.train_seconds,
            "val_seconds": self.val_seconds,
            "images": self.images,
            "epochs_timed": self.epochs_timed[-20:],
            "minima": dict(self.minima),
        }

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._stage = stage

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self._stage != "fit":  # testing best.ckpt must not roll the record back to it
            return
        self.train_seconds = float(state_dict.get("train_seconds", 0.0))
        self.val_seconds = float(state_dict.get("val_seconds", 0.0))
        self.images = int(state_dict.get("images", 0))
        self.epochs_timed = list(state_dict.get("epochs_timed", []))
        self.minima = dict(state_dict.get("minima", {}))
        if self.run.previous is None:  # summary.json was lost or unreadable: the checkpoint's record
            self.run.summary = {**state_dict.get("summary", {}), **self.run.summary}

    # ------------------------------------------------------------------ timing
    # Training time is added up segment by segment (up to a validation, after it), and an
    # epoch's entry is made at its end-of-epoch validation, before the checkpoint written there:
    # a run resumed from that checkpoint neither loses nor repeats the epoch's time.
    def _new_epoch(self, epoch: int) -> dict[str, Any]:
        return {"epoch": epoch, "images": 0, "train_seconds": 0.0, "val_seconds": 0.0}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._train_start = self._segment_start = time.perf_counter()
        self._warmup = None
        self._epoch_checkpoint = _checkpoint_seconds(trainer)
        self._last_batch_end, self._step_seconds = None, []
        closed = bool(self.epochs_timed) and self.epochs_timed[-1]["epoch"] == trainer.current_epoch
        self._epoch = None if closed else self._new_epoch(trainer.current_epoch)  # resumed mid-epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._segment_start = time.perf_counter()
        self._epoch = self._new_epoch(trainer.current_epoch)
        self._epoch_checkpoint = _checkpoint_seconds(trainer)
        self._last_batch_end, self._step_seconds = None, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        now = time.perf_counter()
        self.images += len(batch)
        if self._epoch is not None:
            self._epoch["images"] += len(batch)
        if self._warmup is None:  # the first step: compilation and graph capture included
            self._warmup = now - self._train_start
        elif self._last_batch_end is not None:  # steady state: one step and the loop around it
            self._step_seconds.append(now - self._last_batch_end)
        self._last_batch_end = now

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_start = time.perf_counter()
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self.train_seconds += self._val_start - self._segment_start
            if self._epoch is not None:
                self._epoch["train_seconds"] += self._val_start - self._segment_start

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        now = time.perf_counter()
        self.val_seconds += now - self._val_start
        if self._epoch is not None:
            self._epoch["val_seconds"] += now - self._val_start
            if trainer.global_step % max(int(trainer.num_training_batches), 1) == 0:  # the epoch's end
                self._close_epoch()
        self._segment_start = now
        self.write(trainer, pl_module)

    def _close_epoch(self) -> None:
        entry = {k: round(v, 4) if isinstance(v, float) else v for k, v in (self._epoch or {}).items()}
        # batch end to batch end within the epoch: a step with the loop's work around it
        entry["step_ms"] = round(1e3 * statistics.mean(self._step_seconds), 4) if self._step_seconds else None
        self.epochs_timed = [*self.epochs_timed[-19:], entry]
        self._epoch = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        checkpoint = _checkpoint_seconds(trainer) - self._epoch_checkpoint  # the time training waited
        seconds = time.perf_counter() - self._segment_start - checkpoint
        self.train_seconds += seconds
        if self._epoch is not None:  # no validation at this epoch's end: it closes here
            self._epoch["train_seconds"] += seconds
            self._close_epoch()
        elif self.epochs_timed and self.epochs_timed[-1]["epoch"] == trainer.current_epoch:
            self.epochs_timed[-1]["train_seconds"] = round(
                self.epochs_timed[-1]["train_seconds"] + seconds, 4
            )
        if self.epochs_timed and self.epochs_timed[-1]["epoch"] == trainer.current_epoch:
            self.epochs_timed[-1]["checkpoint_seconds"] = round(checkpoint, 4)

    def _track_minima(self, trainer: L.Trainer) -> None:
        for field, key in keys.SUMMARY_MINIMA.items():
            value = finite_number(trainer.callback_metrics.get(key))
            if value is not None and value < self.minima.get(field, math.inf):
                self.minima[field] = value
                if key == keys.VAL_LOSS:
                    self.minima["best_epoch"] = trainer.current_epoch + 1  # counted from 1

    # ------------------------------------------------------------------ writing
    def _collect(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        arch = pl_module.arch
        data: dict[str, Any] = {
            "model": type(pl_module).__name__,
            "network": arch.network,
            **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(arch).items()},
            "layers": arch.layers,
            "likelihood": pl_module.likelihood.name,
            "bpd_is_likelihood": pl_module.bpd_is_likelihood,
            "params": pl_module.num_parameters,
            # the trainer's device: on_fit_end runs after Lightning's teardown has moved the module
            # back to the CPU, so the module's device would say "cpu" on a GPU run
            "device": _device_name(trainer.strategy.root_device),
            "precision": str(trainer.precision),
            "float32": effective_float32(),  # what float32 matmuls and convolutions ran as: ieee or tf32
            **self.extra,
        }
        if trainer.state.fn == "fit":  # testing (best.ckpt's weights) leaves the training record as it was
            self._track_minima(trainer)  # each write sees the latest epoch's losses
            forward = pl_module.forward_fn
            data.update(
                epochs=trainer.current_epoch,
                global_step=trainer.global_step,
                max_epochs=trainer.max_epochs,
                train_seconds=round(self.train_seconds, 3),
                val_seconds=round(self.val_seconds, 3),
                images_per_second=round(self.images / self.train_seconds, 1) if self.train_seconds else None,
                skipped_steps=int(pl_module.step.skipped),
                epochs_timed=self.epochs_timed[-20:],  # the latest epochs' images and seconds
                compile=pl_module.options.compile,
                compile_first_call_seconds=forward.first_call_seconds,
                compile_fell_back=forward.fell_back,
                compile_eval_first_call_seconds=pl_module.eval_fn.first_call_seconds,
                captured=pl_module.step.graphed is not None,
                warmup_seconds=None if self._warmup is None else round(self._warmup, 3),
                peak_memory_gib=_peak_memory_gib(trainer.strategy.root_device),
                **self.minima,
            )
            ckpt = trainer.checkpoint_callback
            if ckpt is not None and getattr(ckpt, "best_model_score", None) is not None:
                data["best_val_loss"] = finite_number(ckpt.best_model_score)
        metrics = trainer.callback_metrics
        for field, key in keys.SUMMARY_FIELDS.items():
            if key in metrics:
                data[field] = finite_number(metrics[key])
        return data

    def write(self, trainer: L.Trainer, pl_module: L.LightningModule, **fields: Any) -> None:
        # every rank keeps the record (their decisions after fit follow it); rank 0 writes it
        self.run.write_summary(**self._collect(trainer, pl_module), **fields)
        if trainer.is_global_zero and self.mirror is not None:
            self.mirror({k: self.run.summary.get(k) for k in keys.DASHBOARD_FIELDS})

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.write(trainer, pl_module, status="running", error=None, started_at=local_time())

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # fit returned before max_epochs without an error: EarlyStopping (or another callback)
        # stopped it; Lightning's stopped_epoch cannot tell a stop at epoch 0 from no stop
        stopped_early = trainer.max_epochs not in (None, -1) and trainer.current_epoch < trainer.max_epochs
        val_loss = trainer.callback_metrics.get(keys.VAL_LOSS)
        fields: dict[str, Any] = {"status": "finished", "stopped_early": stopped_early}
        if val_loss is not None and finite_number(val_loss) is None:
            fields.update(
                status="failed",
                error=f"diverged: {keys.VAL_LOSS} is not finite at epoch {trainer.current_epoch}; "
                + (
                    "best.ckpt holds the best epoch with a finite one"
                    if _has_best(trainer)
                    else "no epoch had a finite one, so there is no best.ckpt"
                ),
            )
        self.write(trainer, pl_module, **fields, finished_at=local_time())

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        tested = Path(trainer.ckpt_path).name if trainer.ckpt_path else None
        self.write(trainer, pl_module, tested=True, tested_checkpoint=tested)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self.write(
            trainer,
            pl_module,
            status=end_status(exception),
            error=f"{type(exception).__name__}: {exception}",
            finished_at=local_time(),
        )


def _has_best(trainer: L.Trainer) -> bool:
    return any(
        c.monitor and c.best_model_path and Path(c.best_model_path).is_file()
        for c in trainer.checkpoint_callbacks
    )


def _checkpoint_seconds(trainer: L.Trainer) -> float:
    """Seconds training has waited for checkpoint writes so far (resvae's checkpoint IO counts them)."""
    return float(getattr(trainer.strategy.checkpoint_io, "seconds", 0.0))


def _peak_memory_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if device.type == "cuda" else None


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type
