"""Checkpoint files: atomic saves, safe loads, and checks that a checkpoint fits the run.

Checkpoints are read with `torch.load(weights_only=True)`: tensors and plain containers only,
so a crafted file cannot run code when a run resumes from it or a tool opens it. Everything
resvae and Lightning put into a checkpoint (weights, optimizer and scheduler states, loop
progress, callback states, RNG states as tensors, the `resvae` entry) is plain data.
"""

from __future__ import annotations

import pickle
import time
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import AsyncCheckpointIO, TorchCheckpointIO

from resvae.run.io import atomic_write

CHECKPOINT_TAG = "resvae"


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, unsafe, not resvae's, or of another model."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes local checkpoints to a temporary file, then renames: a kill mid-write leaves the
    previous checkpoint intact (Lightning's fsspec writer is not atomic). Remote paths (s3://,
    ...) go through Lightning's own writer. `seconds` adds up the time spent writing."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds = 0.0

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        start = time.perf_counter()
        if "://" in str(path) and get_filesystem(path).protocol not in ("file", ("file", "local")):
            super().save_checkpoint(checkpoint, path, storage_options)
        else:
            atomic_write(Path(path), lambda f: torch.save(checkpoint, f))
        self.seconds += time.perf_counter() - start


class BackgroundCheckpointIO(AsyncCheckpointIO):
    """Lightning's AsyncCheckpointIO around an AtomicCheckpointIO: the tensors are copied on the
    training thread (training cannot change them mid-write), the file is written atomically in a
    background thread, and teardown waits for the last write (a SIGTERM'd run saves before it
    exits). `seconds` adds up the time training waited (the copy)."""

    def __init__(self) -> None:
        super().__init__(AtomicCheckpointIO())
        self.seconds = 0.0

    def save_checkpoint(self, *args: Any, **kwargs: Any) -> None:
        start = time.perf_counter()
        super().save_checkpoint(*args, **kwargs)
        self.seconds += time.perf_counter() - start


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A resvae checkpoint as a dict (tensors memory-mapped), loaded safely, checked."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refused to load {path}: it holds objects other than tensors and plain data, which "
            "could run code when loaded; resvae never writes such files. Use a checkpoint "
            f"written by resvae-train ({str(err).splitlines()[0]})"
        ) from err
    except Exception as err:
        raise CheckpointError(
            f"checkpoint {path} cannot be read: {unreadable_kind(path, err)}; use another checkpoint "
            f"(e.g. {other_checkpoint(path)}) or start the run again"
        ) from err
    if not isinstance(ckpt, dict) or CHECKPOINT_TAG not in ckpt:
        raise CheckpointError(
            f"{path} is not a resvae checkpoint: {foreign_kind(ckpt)}, without the '{CHECKPOINT_TAG}' "
            "entry that resvae-train writes into each checkpoint; use one from a resvae run folder"
        )
    return ckpt


def other_checkpoint(path: Path) -> str:
    """The run folder's other checkpoint, to suggest in place of an unreadable one."""
    other = "last.ckpt" if path.name == "best.ckpt" else "best.ckpt"
    sibling = path.with_name(other)
    return str(sibling) if sibling.is_file() else other


def unreadable_kind(path: Path, err: Exception) -> str:
    """What a file that torch.load cannot read is, from its first bytes (for the error line);
    torch's own words only where the bytes do not tell."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        return "the file is empty (its write was interrupted)"
    if head == b"PK\x03\x04":  # torch's zip format
        if not zipfile.is_zipfile(path):
            return "a zip archive whose end is missing: truncated, probably by an interrupted write or copy"
        reason = (str(err).splitlines() or [""])[0][:160]
        return f"a complete zip archive, not in PyTorch's checkpoint layout ({type(err).__name__}: {reason})"
    if head[:1] == b"\x80":  # a pickle's PROTO opcode
        return "a pickle in torch's legacy (pre-1.6, not zip) format, which resvae does not read"
    return f"not a PyTorch checkpoint at all (it starts with {head!r})"


def foreign_kind(ckpt: object) -> str:
    """What a readable checkpoint without resvae's entry is."""
    if not isinstance(ckpt, dict):
        return f"it holds a {type(ckpt).__name__}, not a checkpoint dict"
    if "pytorch-lightning_version" in ckpt:
        return (
            f"a Lightning {ckpt['pytorch-lightning_version']} checkpoint (epoch {ckpt.get('epoch', '?')}) "
            "of another program or of a resvae from before its checkpoints were tagged"
        )
    if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return f"a bare state_dict of {len(ckpt)} tensors, not a training checkpoint"
    return f"a dict with keys {', '.join(map(str, list(ckpt)[:5]))}"


def check_compatible(info: dict[str, Any], model_class: str, shape: dict[str, Any], path: Path) -> None:
    """Raise CheckpointError naming every field (model, architecture, likelihood) where the
    checkpoint's `resvae` entry differs from the model this run builds."""
    if info.get("model_class") != model_class:
        raise CheckpointError(
            f"{path} holds a {info.get('model_class')} but this run builds a {model_class}; "
            f"set model= to the checkpoint's model or use another checkpoint"
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
