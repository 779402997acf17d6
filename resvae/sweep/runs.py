"""What a sweep folder's runs are: one `RunRecord` per job folder, read by `collect_runs`.

A job folder is a folder directly below the sweep folder with a `summary.json` or a `.hydra/`
folder. Its record holds the summary, the eval.json of `resvae-eval` (when there is one), the
validation and training loss per epoch from metrics.csv, the latest sample and reconstruction
grids and the job's command-line overrides (summary.json's `overrides`, else
`.hydra/overrides.yaml`). A job whose summary.json is missing or unreadable is "broken": the
record says why, and the rest of the sweep is read as usual. Problems that do not break a run (an
unreadable eval.json, metrics.csv or overrides.yaml) are kept as the record's notes.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FAILED = ("failed", "interrupted", "broken")


@dataclass
class RunRecord:
    """What one job folder holds. `broken` is why its summary.json could not be read."""

    folder: Path
    summary: dict[str, Any] = field(default_factory=dict)
    broken: str | None = None
    eval: dict[str, Any] | None = None
    val_curve: list[tuple[float, float]] = field(default_factory=list)  # (epoch, val/loss)
    train_curve: list[tuple[float, float]] = field(default_factory=list)  # (epoch, train/loss)
    sample_png: Path | None = None
    recon_png: Path | None = None
    notes: list[str] = field(default_factory=list)  # problems that do not break the run
    overrides: list[str] = field(default_factory=list)  # the job's overrides, `key=value`

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def status(self) -> str:
        return "broken" if self.broken else str(self.summary.get("status") or "unknown")

    @property
    def error(self) -> str | None:
        return self.broken or (self.summary.get("error") if self.status in FAILED else None)


def collect_runs(sweep_dir: str | Path) -> list[RunRecord]:
    """One record per job folder directly below `sweep_dir`, in folder-name order."""
    folders = sorted(p for p in Path(sweep_dir).iterdir() if p.is_dir() and _is_job(p))
    return [read_run(folder) for folder in folders]


def _is_job(folder: Path) -> bool:
    return (folder / "summary.json").is_file() or (folder / ".hydra").is_dir()


def read_run(folder: Path) -> RunRecord:
    run = RunRecord(folder)
    summary, run.broken = _read_json(folder / "summary.json")
    run.summary = summary or {}
    if (folder / "eval.json").exists():
        run.eval, problem = _read_json(folder / "eval.json")
        if problem:
            run.notes.append(problem)
    try:
        curves = read_curves(folder / "metrics.csv", ("val/loss", "train/loss"))
        run.val_curve, run.train_curve = curves["val/loss"], curves["train/loss"]
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        run.notes.append(f"metrics.csv: {e}")
    run.overrides = _overrides(run)
    run.sample_png = latest_png(folder / "samples")
    run.recon_png = latest_png(folder / "recon")
    return run


def _overrides(run: RunRecord) -> list[str]:
    """summary.json's `overrides`, else `.hydra/overrides.yaml` (a YAML list of strings)."""
    found = run.summary.get("overrides")
    if not isinstance(found, list):
        path = run.folder / ".hydra" / "overrides.yaml"
        if not path.is_file():
            return []
        import yaml

        try:
            found = yaml.safe_load(path.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            run.notes.append(f"overrides.yaml: {str(e).splitlines()[0]}")
            return []
    return [item for item in found if isinstance(item, str)] if isinstance(found, list) else []


def _read_json(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(the JSON object, None), or (None, why it cannot be read)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None, f"{path.name}: missing (the job never started or was killed before writing it)"
    except json.JSONDecodeError as e:
        return None, f"{path.name}: {e.msg}: line {e.lineno} column {e.colno}"
    except (OSError, UnicodeDecodeError) as e:
        return None, f"{path.name}: {e}"
    if not isinstance(data, dict):
        return None, f"{path.name}: not a JSON object"
    return data, None


def read_curves(path: Path, names: Sequence[str]) -> dict[str, list[tuple[float, float]]]:
    """Per metric, (epoch, value) pairs from a wide metrics.csv; empty cells are skipped, and
    an epoch logged twice keeps its last value. A missing file gives empty curves."""
    by_epoch: dict[str, dict[float, float]] = {name: {} for name in names}
    if path.is_file():
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                epoch = number(row.get("epoch"))
                for name in names:
                    value = number(row.get(name))
                    if epoch is not None and value is not None:
                        by_epoch[name][epoch] = value
    return {name: sorted(points.items()) for name, points in by_epoch.items()}


def latest_png(folder: Path) -> Path | None:
    """The grid with the highest epoch number, `epoch_NNN.png`, in `folder`."""
    found = [
        (int(m[1]), p) for p in folder.glob("epoch_*.png") if (m := re.fullmatch(r"epoch_(\d+)\.png", p.name))
    ]
    return max(found)[1] if found else None


def number(value: Any) -> float | None:
    """A finite float from a number or a numeric string; None for anything else (bools too)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return result if math.isfinite(result) else None


def integer(value: Any) -> int | None:
    """An integer from a whole number or its string (see `number`); None for anything else."""
    result = number(value)
    return int(result) if result is not None and result.is_integer() else None


# ---------------------------------------------------------------------------------- the sweep
def sweep_name(sweep_dir: Path) -> str:
    """The sweep's name: its folder's, or for Hydra's `<name>/multirun` the parent's."""
    resolved = sweep_dir.resolve()
    return resolved.parent.name if resolved.name == "multirun" else resolved.name


def status_counts(runs: Sequence[RunRecord]) -> str:
    """The line `N run(s): n1 status1, n2 status2, ...`, statuses in name order."""
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.status] = counts.get(run.status, 0) + 1
    return f"{len(runs)} run(s): " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))


def problems(runs: Iterable[RunRecord]) -> list[tuple[RunRecord, str]]:
    """(run, what went wrong) for failed, interrupted and broken runs, and unreadable side files."""
    found = []
    for run in runs:
        if run.status in FAILED:
            found.append((run, f"{run.status}: {run.error or 'no error recorded'}"))
        found += [(run, note) for note in run.notes]
    return found
