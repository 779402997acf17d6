"""Atomic file writes: a reader (or a killed job) sees the old file or the new one, never half.

Each write goes to a temporary file in the same folder, is flushed to disk, and then replaces
the target with os.replace, which is atomic on POSIX filesystems.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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
