"""metrics.csv that stays true across kills and resumes, and the W&B run's lifetime.

Why not Lightning's CSVLogger: it deletes an existing metrics.csv when it starts and rewrites
the file in place when a new column appears, so a kill or a resume loses or repeats history.
`MetricsCSVLogger` keeps every logged row in memory, rewrites the file atomically (temporary
file, then rename) whenever rows were added, and is also a callback whose state, the rows,
goes into each checkpoint. A run resumed from a checkpoint starts from exactly the rows logged
before that checkpoint and logs the rest again: each (step, metric) appears once, and nothing
logged before the checkpoint is lost, whenever the kill came.
"""

from __future__ import annotations

import csv
import io
import logging
import sys
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from resvae.run.io import atomic_write

FIRST_COLUMNS = ("epoch", "step")


class MetricsCSVLogger(Logger, L.Callback):
    def __init__(self, save_dir: str, filename: str = "metrics.csv") -> None:
        super().__init__()
        self._save_dir = save_dir
        self.path = Path(save_dir) / filename
        self.rows: list[dict[str, Any]] = []
        self._dirty = False
        self._stage: str | None = None
        self._test_position: dict[str, int] = {}

    # ----------------------------------------------------------------- Logger
    @property
    def name(self) -> str:
        return ""

    @property
    def version(self) -> str:
        return ""

    @property
    def save_dir(self) -> str:
        return self._save_dir

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Hyperparameters are in .hydra/ and summary.json, not in a metrics table."""

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        row = {k: v if isinstance(v, int) else float(v) for k, v in metrics.items()}
        # the Nth epoch, counted from 1 as everywhere else: Lightning logs its 0-based epoch while
        # fitting, and after fit (the test) the count of epochs done, i.e. the last epoch's number
        if "epoch" in row and self._stage != "test":
            row["epoch"] = int(row["epoch"]) + 1
        if step is not None:
            row["step"] = int(step)
        if self._stage == "test" and self._test_position:
            row.update(self._test_position)
        self.rows.append(row)
        self._dirty = True

    @rank_zero_only
    def save(self) -> None:  # Lightning calls this after each log_metrics
        if self._dirty:
            write_rows(self.path, self.rows)
            self._dirty = False

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()

    def restore(self, rows: list[dict[str, Any]]) -> None:
        """Start from `rows` (those a checkpoint holds) and write them out at once."""
        self.rows = [dict(r) for r in rows]
        self._dirty = True
        self.save()

    def restore_for_test(self, checkpoint: Mapping[str, Any], epoch: int, step: int) -> None:
        """A test-only attempt (training finished earlier): keep the file's training rows (the
        checkpoint's rows if the file is unreadable), drop an earlier test's rows, and log the
        test at the run's final `epoch` and `step`, as a test right after training is."""
        try:
            rows = read_rows(self.path)
        except (OSError, ValueError, csv.Error):
            rows = list(checkpoint.get("callbacks", {}).get(self.state_key, {}).get("rows", []))
        self._test_position = {"epoch": epoch, "step": step}
        self.restore([r for r in rows if not any(k.startswith("test/") for k in r)])

    # ----------------------------------------------------------------- Callback: rows in checkpoints
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._stage = stage

    def state_dict(self) -> dict[str, Any]:
        return {"rows": [dict(r) for r in self.rows]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # only when training resumes: testing a best.ckpt must not roll the history back to it
        if self._stage == "fit":
            self.restore(list(state_dict.get("rows", [])))


def read_rows(path: Path) -> list[dict[str, Any]]:
    """metrics.csv -> rows as logged (empty cells dropped; epoch and step as ints)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [
        {k: int(float(v)) if k in FIRST_COLUMNS else float(v) for k, v in row.items() if v not in ("", None)}
        for row in rows
    ]


def write_rows(path: Path, rows: list[Mapping[str, Any]]) -> None:
    """rows -> a wide CSV (epoch, step, then the metrics sorted), replaced atomically."""
    keys = {k for row in rows for k in row}
    header = [k for k in FIRST_COLUMNS if k in keys] + sorted(keys - set(FIRST_COLUMNS))
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=header)
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    atomic_write(path, lambda f: f.write(text.getvalue().encode()))


def wandb_summary_mirror(loggers: list[Any]) -> Callable[[dict[str, Any]], None] | None:
    """A function that copies fields into the W&B run summary of each WandbLogger, if any."""
    runs = [lg for lg in loggers if isinstance(lg, WandbLogger)]
    if not runs:
        return None

    def mirror(fields: dict[str, Any]) -> None:
        for logger in runs:
            logger.experiment.summary.update({k: v for k, v in fields.items() if v is not None})

    return mirror


def finish_wandb(exit_code: int, preempted: bool = False) -> None:
    """Close the W&B run (if any) with the job's exit code, so failures show as failed; a run
    stopped by the cluster is marked preempting (the requeued job continues the same W&B run)."""
    if "wandb" not in sys.modules:
        return
    import wandb

    if wandb.run is not None:
        if preempted:
            wandb.run.mark_preempting()
        wandb.finish(exit_code=exit_code)


# Messages a user cannot act on; every other warning stays (and goes to train.log).
BOILERPLATE_WARNINGS = (
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",  # torch's deprecation, raised inside Lightning
    r".*is smaller than the logging interval.*",  # short epochs: the per-epoch metrics are logged anyway
    # torch.compile's advice under matmul_precision=highest, which a run only has when it asked for
    # IEEE float32 (the study's protocol); a warning in every compiled validation with torch 2.11
    # on an H200 (later versions log it at info level instead)
    r".*TensorFloat32 tensor cores for float32 matrix multiplication available but not enabled.*",
)


def quiet_boilerplate() -> None:
    """Silence Lightning's litlogger advert, the warnings above and Optuna's database
    migration lines (alembic)."""
    for pattern in BOILERPLATE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "litlogger" not in record.getMessage()
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
