"""Checkpoint files: atomic saves, and checks that a checkpoint fits the run that loads it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from resvae.io import atomic_write

CHECKPOINT_TAG = "resvae"


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, not resvae's, or of another architecture."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes local checkpoints to a temporary file, then renames: a kill mid-write leaves the
    previous checkpoint intact. Remote paths (s3://, ...) go through Lightning's own writer."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if get_filesystem(path).protocol not in ("file", ("file", "local")) and "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_write(Path(path), lambda f: torch.save(checkpoint, f))


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A resvae checkpoint as a dict (tensors memory-mapped where possible), checked."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:
        try:  # mmap needs the zip format; older or foreign files may load without it
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        except Exception:
            raise CheckpointError(
                f"checkpoint {path} cannot be read ({type(err).__name__}: {err}); it may be truncated"
            ) from err
    if not isinstance(ckpt, dict) or CHECKPOINT_TAG not in ckpt:
        raise CheckpointError(
            f"{path} is not a resvae checkpoint (no '{CHECKPOINT_TAG}' entry): it was not written "
            "by resvae-train"
        )
    return ckpt


def ledger_rows(checkpoint: dict[str, Any]) -> list[dict[str, Any]]:
    """The epoch metrics recorded by the MetricsLedger callback in a checkpoint."""
    return list(checkpoint.get("callbacks", {}).get("MetricsLedger", {}).get("rows", []))


def epoch_end_pending(checkpoint: dict[str, Any]) -> bool:
    """True when the checkpoint was written before its epoch's end hooks ran (Lightning will run
    them, and log the epoch's training metrics, again on resume)."""
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {})
    return int(progress.get("processed", checkpoint.get("epoch", 0) + 1)) <= int(checkpoint.get("epoch", 0))


def logged_step(checkpoint: dict[str, Any]) -> int:
    """The logger step a checkpoint was written at (Lightning's batches-that-stepped count)."""
    loop = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.state_dict", {})
    return int(loop.get("_batches_that_stepped", checkpoint.get("global_step", 0)))


def check_compatible(info: dict[str, Any], shape: dict[str, Any], model_class: str, path: Path) -> None:
    """Raise CheckpointError naming every field (architecture, likelihood) where the checkpoint
    differs from the model this run builds (`shape`: LatentModel.shape_signature())."""
    if info.get("model_class") != model_class:
        raise CheckpointError(
            f"{path} holds a {info.get('model_class')} but this run builds a {model_class}; "
            f"set model={str(info.get('model_class')).lower()} or another checkpoint"
        )
    saved = {**info.get("arch", {}), "likelihood": info.get("likelihood"), "n_mix": info.get("n_mix")}
    diffs = [
        f"{k}: checkpoint {saved.get(k)!r} vs run {v!r}"
        for k, v in shape.items()
        if saved.get(k) is not None and _plain(saved[k]) != _plain(v)
    ]
    if diffs:
        raise CheckpointError(
            f"{path} was trained with another architecture ({'; '.join(diffs)}); set the model "
            "options to match it, or start a new run"
        )


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (tuple, list)) else value
