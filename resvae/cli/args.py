"""Pieces shared by the command-line tools that load a run's checkpoint (resvae-eval,
resvae-sample): number types (a bad number is argparse's usage error, not a traceback), the
options that say where the model runs and where its data and config are, and progress lines."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

from resvae.run.config import NAME_PATTERN


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def json_file(text: str) -> Path:
    """An --out that names a .json file, never a run's summary.json or a folder (a slip such as
    `--out RUN/checkpoints/best.ckpt` would otherwise replace the run's own files)."""
    path = Path(text)
    if path.suffix != ".json" or path.name == "summary.json" or path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: name a .json file of its own (not summary.json)")
    return path


def file_stem(text: str) -> str:
    """A file name stem of letters, digits and . _ - (no folders: the files stay where they belong)."""
    if not NAME_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r}: use letters, digits and . _ - (no /), e.g. compare")
    return text


def device_name(text: str) -> str:
    """cpu, cuda or cuda:N (torch's other device kinds have no path through these tools)."""
    if not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"{text!r}: choose cpu, cuda or cuda:N")
    return text


def add_run_options(p: argparse.ArgumentParser) -> None:
    """--device, --data-root and --config, read by resvae.cli.targets.pick_device and run_config."""
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument(
        "--data-root",
        help="where the data is (default: the run's .hydra/config.yaml data.root, else $RESVAE_DATA or "
        "./data; see resvae/cli/data_root.py)",
    )
    p.add_argument("--config", type=Path, help="the run's config (default: RUN/.hydra/config.yaml)")


def progress_printer(label: str, unit: str = "batch") -> Callable[[int, int], None]:
    """`show(done, total)`: one updating line on a terminal, else a line at every quarter (logs),
    as the training log's test phase (callbacks/progress.py)."""
    from resvae.callbacks.progress import at_quarter  # late: the callbacks import resvae-analyze's writers
    tty = sys.stderr.isatty()

    def show(done: int, total: int) -> None:
        if tty:
            end = "\n" if done == total else ""
            print(f"\r{label}: {unit} {done}/{total}", end=end, file=sys.stderr, flush=True)
        elif at_quarter(done, total):
            print(f"{label}: {unit} {done}/{total} ({100 * done // total}%)", file=sys.stderr, flush=True)

    return show
