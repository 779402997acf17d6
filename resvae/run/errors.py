"""Errors of the user's making end a job with one clear line; the traceback goes to the run's log.

A wrong config value, a missing or corrupt dataset, a bad checkpoint, a run folder in use or
holding another run, a diverged run: the message says what is wrong and how to fix it, so the
frames that led there would only hide it. They are kept in the run's log file for a bug report.
"""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path

from hydra.errors import InstantiationException
from omegaconf.errors import OmegaConfBaseException

from resvae.data import DatasetError
from resvae.models import NonFiniteTrainingError
from resvae.run.checkpoints import CheckpointError
from resvae.run.folder import RunFolderError
from resvae.run.io import DiskFullError

USER_ERRORS: tuple[type[BaseException], ...] = (
    CheckpointError,
    DatasetError,
    DiskFullError,
    InstantiationException,
    NonFiniteTrainingError,
    OmegaConfBaseException,
    RunFolderError,
    ValueError,  # our validation of config values (depth, sizes, names, rates) raises these
)


def one_line(error: BaseException) -> str:
    """The message of `error` (or of the config error Hydra wrapped) on one line."""
    cause = error.__cause__ if isinstance(error, InstantiationException) and error.__cause__ else error
    text = " ".join(str(cause).split()) or type(cause).__name__
    where = getattr(error, "full_key", None) or _full_key(str(error))
    return f"{text} (config: {where})" if where and isinstance(error, InstantiationException) else text


def _full_key(message: str) -> str | None:
    for line in message.splitlines():
        if line.startswith("full_key:"):
            return line.split(":", 1)[1].strip() or None
    return None


def report(error: BaseException, program: str, log_dir: Path | None, keep_traceback: bool = True) -> None:
    """Print `program: error: <one line>` to stderr; the traceback goes to the run's log files
    (the file handlers Hydra's job logging set up), or to `log_dir/error.log` without them, unless
    not `keep_traceback` (an attempt refused a folder it does not own: nothing is written there)."""
    text = "".join(traceback.format_exception(error))
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    if not keep_traceback:
        files, log_dir = [], None
    for handler in files:
        handler.handle(
            logging.makeLogRecord(
                {"name": program, "levelno": logging.ERROR, "levelname": "ERROR", "msg": text}
            )
        )
    where = files[0].baseFilename if files else None
    if not files and log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        where = str(log_dir / "error.log")
        with open(where, "a") as f:
            f.write(text)
    suffix = f" (traceback in {where})" if where else ""
    print(f"{program}: error: {one_line(error)}{suffix}", file=sys.stderr, flush=True)
