"""A CSV logger that a resumed run can continue: metrics.csv is kept, rows are written at once.

Lightning's CSVLogger deletes an existing metrics.csv when it starts and buffers rows in memory,
so a preempted run would lose its history, or the rows of its last epochs. This one keeps the
file (rebuilt by the training entry point from the checkpoint's MetricsLedger, so that it holds
exactly the epochs that the checkpoint has seen) and appends every logged row immediately.
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
