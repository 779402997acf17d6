"""Atomic file writes: a reader (or a killed job) sees the old file or the new one, never half.

Each write goes to a temporary file in the same folder, is flushed to disk, and then replaces
the target with os.replace, which is atomic on POSIX filesystems.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp's 0600 would hide files from a group


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        full = _disk_full(path.parent, err)  # before the partial file is gone and frees its space
        Path(tmp).unlink(missing_ok=True)
        if full:
            raise DiskFullError(
                errno.ENOSPC,
                f"no space left on the device of {path.parent} while writing {path.name} (the previous "
                f"{path.name}, if any, is intact): free some space, then rerun the same command (it "
                "continues from checkpoints/last.ckpt, or says how to go on where there is none)",
            ) from err
        raise
    return path


class DiskFullError(OSError):
    """A write failed because its file system is full."""


def _disk_full(folder: Path, error: BaseException) -> bool:
    """torch.save reports a full disk as a RuntimeError of its zip writer, hence the free-space check."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if not isinstance(error, (OSError, RuntimeError)):
        return False
    try:
        return shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        return False


def atomic_write_json(path: str | Path, data: Any) -> Path:
    text = json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
    return atomic_write(path, lambda f: f.write(text.encode()))


def remove_partial_writes(folder: str | Path, skip: tuple[str, ...] = ("wandb", ".hydra")) -> list[str]:
    """Delete the temporary files of atomic writes that a killed process left below `folder`
    (several GB each for a large checkpoint); only call it while holding the folder's lock."""
    removed = []
    for path in Path(folder).rglob(".*.tmp"):
        if path.is_file() and not any(part in skip for part in path.relative_to(folder).parts):
            path.unlink(missing_ok=True)
            removed.append(str(path.relative_to(folder)))
    return removed
