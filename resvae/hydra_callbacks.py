"""Hydra callback: a multirun ends with a table of its jobs and the list of those that failed.

Hydra's basic sweeper runs every job, then re-raises the first failure, which skips
`on_multirun_end`; so the report is registered with atexit when the sweep starts and printed
however the process ends (the exit code stays Hydra's: non-zero when a job failed).
"""

from __future__ import annotations

import atexit
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from resvae.callbacks.summary import read_summary


def sweep_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job folder of a sweep that has a summary.json, sorted by folder name."""
    return [
        {"job": path.parent.name, **(read_summary(path.parent) or {})}
        for path in sorted(sweep_dir.glob("*/summary.json"))
    ]


def format_sweep_report(sweep_dir: Path) -> str:
    rows = sweep_rows(sweep_dir)
    lines = [f"sweep {sweep_dir}: {len(rows)} job(s)"]
    for r in rows:
        lines.append(
            f"  {r['job']:<40} {r.get('status', '?'):<9} depth={r.get('depth')} "
            f"epochs={r.get('epochs')} best_val_loss={r.get('best_val_loss')}"
        )
    failed = [r for r in rows if r.get("status") == "failed"]
    if failed:
        lines.append(f"{len(failed)} job(s) FAILED:")
        lines += [f"  {sweep_dir / r['job']}: {r.get('error')}" for r in failed]
    return "\n".join(lines)


class SweepReport(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        atexit.register(lambda: print(format_sweep_report(sweep_dir), flush=True))
