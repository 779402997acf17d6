"""A CSV logger that a resumed run can continue: metrics.csv is kept, rows are written at once.

Lightning's CSVLogger deletes an existing metrics.csv when it starts and buffers rows in memory,
so a preempted run would lose its history, or the rows of its last epochs. This one keeps the
file (trimmed by the training entry point to what the resumed checkpoint has seen, see
`restore_metrics_csv`) and appends every logged row immediately.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from resvae.io import atomic_write


class _AppendingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if path.is_file():
            with open(path, newline="") as f:
                header = csv.DictReader(f).fieldnames or []
            self.metrics_keys = sorted(header)
            if header != self.metrics_keys:  # appends assume the sorted header Lightning writes
                self._rewrite_with_new_header(self.metrics_keys)

    def log_metrics(self, metrics_dict: dict[str, float], step: int | None = None) -> None:
        super().log_metrics(metrics_dict, step)
        self.save()


class ResumableCSVLogger(CSVLogger):
    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def write_metrics_csv(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Replace metrics.csv with `rows` (one dict per row), atomically, header sorted."""
    rows = list(rows)
    keys = sorted({k for row in rows for k in row})

    def write(f: Any) -> None:
        import io

        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
        f.write(text.getvalue().encode())

    atomic_write(path, write)


def _int(value: Any) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def restore_metrics_csv(
    path: str | Path,
    epoch: int,
    step: int,
    ledger: Iterable[Mapping[str, Any]],
    epoch_end_pending: bool = False,
) -> None:
    """Bring metrics.csv back to the moment of the checkpoint a run resumes from.

    Rows logged after it (a later epoch, or a later step) go: the resumed run logs them again.
    So do the train/* rows of the checkpoint's own epoch when the checkpoint was written before
    that epoch's end hooks ran (`epoch_end_pending`, e.g. saved after a validation that does not
    run every epoch): Lightning runs them again on resume. Epoch metrics the checkpoint's ledger
    holds but the file lacks (a kill between the checkpoint and the file write) are added back,
    so each epoch's metrics appear exactly once.
    """
    path = Path(path)
    rows: list[dict[str, Any]] = []
    if path.is_file():
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    kept = []
    for row in rows:
        row_epoch, row_step = _int(row.get("epoch")), _int(row.get("step"))
        if row_epoch is not None and row_epoch > epoch or row_step is not None and row_step > step:
            continue
        values = {k: v for k, v in row.items() if v not in ("", None)}
        if epoch_end_pending and row_epoch == epoch and any(k.startswith("train/") for k in values):
            continue
        kept.append(values)
    have = {(_int(r.get("epoch")), k) for r in kept for k in r}
    for entry in ledger:
        rerun = epoch_end_pending and entry["epoch"] == epoch  # its train/* will be logged again
        missing = {
            k: v
            for k, v in entry.items()
            if k not in ("epoch", "step")
            and (entry["epoch"], k) not in have
            and not (rerun and k.startswith("train/"))
        }
        if missing and entry["epoch"] <= epoch:
            kept.append({"epoch": entry["epoch"], "step": entry["step"], **missing})
    kept.sort(key=lambda r: _int(r.get("step")) or 0)
    if kept or path.is_file():
        write_metrics_csv(path, kept)
