"""Hydra callback: a multirun ends with its report (report.md/.csv/.html, resvae/report.py), a
table of its jobs, and a non-zero exit code when a job failed.

A job that fails with a user error (resvae/errors.py) returns and the sweep goes on; this
callback's on_multirun_end then sees it in summary.json and exits 1. A job that fails with any
other exception makes Hydra's basic sweeper re-raise it after the sweep, which skips
on_multirun_end; so the report is also registered with atexit and written however the process
ends (the exit code then stays Hydra's, non-zero).
"""

from __future__ import annotations

import atexit
import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from resvae.config import SWEEP_ENV, run_leaf
from resvae.report import FAILED, collect_runs, log_report_to_wandb, write_report


def format_sweep_report(sweep_dir: Path) -> tuple[str, int]:
    """(the table of jobs with the failed ones listed, the number of failed jobs)."""
    runs = collect_runs(sweep_dir)
    lines = [f"sweep {sweep_dir}: {len(runs)} job(s)"]
    for r in runs:
        s = r.summary
        lines.append(
            f"  {r.name:<40} {r.status:<11} depth={s.get('depth')} epochs={s.get('epochs')} "
            f"best_val_loss={s.get('best_val_loss')}"
        )
    failed = [r for r in runs if r.status in FAILED]
    if failed:
        lines.append(f"{len(failed)} job(s) FAILED:")
        lines += [f"  {r.folder}: {r.error}" for r in failed]
    return "\n".join(lines), len(failed)


def finish_sweep(sweep_dir: Path, wandb: dict[str, Any] | None = None) -> int:
    """Write the report (and log it to W&B in the sweep's group when `wandb` has the project and
    group) and print the table; returns the number of failed jobs."""
    text, failed = format_sweep_report(sweep_dir)
    try:
        page = write_report(sweep_dir)
        text += f"\nreport: {page}"
        if wandb and os.environ.get("WANDB_MODE", "").lower() != "disabled":
            log_report_to_wandb(sweep_dir, **wandb)
    except Exception as err:  # the table still matters when a plot cannot be drawn or W&B fails
        text += f"\nreport not complete ({type(err).__name__}: {err})"
    print(text, flush=True)
    return failed


def wandb_target(config: DictConfig) -> dict[str, Any] | None:
    """The W&B project, entity and group of the sweep's runs, when its logger writes to W&B."""
    node = (config.get("logger") or {}).get("wandb")
    if not node:
        return None
    return {
        "project": node.get("project"),
        "group": node.get("group") or config.name,
        "entity": node.get("entity"),
    }


class SweepReport(Callback):
    def __init__(self) -> None:
        self._pending: Any = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # the sweep's folder, named by its command line, fixed for the jobs (see config.sweep_leaf)
        os.environ[SWEEP_ENV] = run_leaf(
            config.hydra.overrides.task, config.run.excludes, config.run.name_excludes
        )
        sweep_dir, wandb = Path(config.hydra.sweep.dir), wandb_target(config)
        self._pending = lambda: finish_sweep(sweep_dir, wandb)
        atexit.register(self._pending)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self._pending is not None:
            atexit.unregister(self._pending)
        if finish_sweep(Path(config.hydra.sweep.dir), wandb_target(config)):
            sys.exit(1)
