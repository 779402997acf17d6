"""What runs and sweeps leave on disk: run folders, summary.json, metrics.csv, checkpoints."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch


def run_dirs(root: Path) -> dict[str, Path]:
    """Run folders (those with a summary.json) below root, keyed by folder name."""
    return {p.parent.name: p.parent for p in root.glob("**/summary.json")}


def only_run_dir(root: Path) -> Path:
    """The one run folder below root (fails if there is none or more than one)."""
    dirs = run_dirs(root)
    assert len(dirs) == 1, dirs
    return next(iter(dirs.values()))


def output_run_dir(root: Path) -> Path:
    """The one run folder of a run started in `root` (below root/outputs)."""
    return only_run_dir(root / "outputs")


def summary_of(run_dir: Path) -> dict:
    """The run folder's summary.json."""
    return json.loads((run_dir / "summary.json").read_text())


def metric_rows(run_dir: Path) -> list[dict[str, str]]:
    """The rows of the run folder's metrics.csv."""
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def epoch_rows(root: Path) -> dict[str, dict[int, float]]:
    """metric -> {epoch: value} of train/loss and val/loss for the run started in `root`, failing on
    any epoch logged twice."""
    with open(output_run_dir(root) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    seen: dict[str, dict[int, float]] = {}
    for row in rows:
        for key in ("train/loss", "val/loss"):
            if row.get(key):
                epochs = seen.setdefault(key, {})
                epoch = int(row["epoch"])
                assert epoch not in epochs, f"{key} logged twice for epoch {epoch}"
                epochs[epoch] = float(row[key])
    return seen


def final_weights(root: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state_dict, the whole checkpoint) of last.ckpt of the run started in `root`."""
    ckpt = torch.load(
        output_run_dir(root) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    return ckpt["state_dict"], ckpt


def read_status(path: Path) -> str | None:
    """The status in a summary.json, or None while it is not written yet (or being replaced)."""
    try:
        return json.loads(path.read_text()).get("status")
    except (OSError, ValueError):  # not written yet, or being replaced
        return None


def sweep_folders(root: Path) -> list[Path]:
    """The sweep folders (each with its multirun.yaml) below root."""
    return sorted(p.parent for p in root.glob("outputs/*/multirun/*/multirun.yaml"))
